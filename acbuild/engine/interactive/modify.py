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
import tempfile
from dataclasses import replace
from pathlib import Path

from acbuild import plan as p
from acbuild.errors import ImageError, NotFoundError

ROOTFS_INSTRUCTIONS = (p.Copy, p.Run, p.WorkDir)


def modify_image(image: Path, steps: list[tuple[p.Instruction, Path | None]], options) -> bool:
    """Apply (instruction, context) pairs to `image`; True when a stale .asc was removed."""
    from acbuild.aci.archive import detect_file_compression, extract_rootfs, read_aci
    from acbuild.aci.manifest import ImageManifest
    from acbuild.aci.writer import rewrite_aci
    from acbuild.files import remove_tree
    from acbuild.engine.session import Session
    from acbuild.trust.sign import replace_together, signature_path

    if not image.is_file():
        raise NotFoundError(f"--modify {image}: no such image")
    full = any(isinstance(i, ROOTFS_INSTRUCTIONS) for i, _ in steps)
    work = Path(tempfile.mkdtemp(prefix="acbuild-modify-"))
    try:
        fd, name = tempfile.mkstemp(prefix=f".{image.name}.", suffix=".aci", dir=image.parent)
    except OSError as e:
        remove_tree(work)
        raise ImageError(f"--modify {image}: {e.strerror}") from e
    os.close(fd)
    tmp = Path(name)
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
        if full:
            session.write(tmp, compression=detect_file_compression(image), overwrite=True)
        else:
            rewrite_aci(image, tmp, session.manifest.to_json())
        had_signature = signature_path(image).exists()
        replace_together(tmp, None, image)
        return had_signature
    finally:
        tmp.unlink(missing_ok=True)
        remove_tree(work)
