"""`acbuild --modify IMAGE.aci VERB ...`: apply instructions to an existing image.

Manifest-only instructions copy the rootfs entries through unchanged
(acbuild.aci.writer.rewrite_aci); COPY, RUN and WORKDIR extract the image to a
temp work dir, apply, and write it again. Contract: atomic - the new image is
written to a temp file beside IMAGE and renamed over it, with IMAGE.asc removed
first (it signed the old bytes); on any error IMAGE is untouched and every
temp file and dir is removed.
"""

from __future__ import annotations

import os
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import NotFoundError
from acbuild.records import replace
from acbuild.temps import locked_temp_dir, remove_locked_dir

ROOTFS_INSTRUCTIONS = (p.Copy, p.Run, p.WorkDir)


def modify_image(image: Path, steps: list[tuple[p.Instruction, Path | None]], options) -> bool:
    """Apply (instruction, context) pairs to `image`; True when a stale .asc was removed."""
    from acbuild.aci.archive import detect_file_compression, read_aci
    from acbuild.aci.extract import extract_rootfs
    from acbuild.aci.manifest import ImageManifest
    from acbuild.aci.writer import rewrite_aci
    from acbuild.engine.session import Session
    from acbuild.trust.sign import replace_together, signature_path

    if not image.is_file():
        raise NotFoundError(f"--modify {image}: no such image")
    full = any(isinstance(i, ROOTFS_INSTRUCTIONS) for i, _ in steps)
    work, lock = locked_temp_dir("acbuild-modify-")

    def install(tmp: Path) -> None:  # drops the stale .asc, then renames
        replace_together(tmp, None, image, reporter=options.reporter)

    try:
        if full:
            (work / "rootfs").mkdir()
            manifest_bytes = extract_rootfs(image, work / "rootfs").manifest_bytes
        else:
            manifest_bytes = read_aci(image).manifest_bytes
        session = Session(work, ImageManifest.from_json(manifest_bytes), options)
        for instruction, context in steps:
            session.options = replace(options, context=context or Path("."))
            session.apply(instruction)
        session.check_manifest()
        had_signature = signature_path(image).exists()
        if full:  # one temp beside the image, renamed over it
            session.write(image, compression=detect_file_compression(image), overwrite=True)
        else:
            rewrite_aci(image, image, session.manifest.to_json(), install=install)
        return had_signature
    finally:
        remove_locked_dir(work, lock)
