"""`acbuild serve --export DIR OUT`: the repository `acbuild serve DIR` would serve,
as static files any web server or object store can host:

    OUT/index.html, OUT/index.json, OUT/pubkeys.gpg
    OUT/HOST/PATH-VERSION-OS-ARCH.aci (.aci.asc)     images (hard links when DIR is
                                                    on the same file system, else copies)
    OUT/PATH/index.html                             the discovery page of HOST/PATH

A static host ignores the `?ac-discovery=1` query, so `https://HOST/PATH?ac-discovery=1`
reads OUT/PATH/index.html (nginx: `root OUT;` and `try_files $uri $uri/index.html =404;`).
The pages name the repository's address, so the export needs it: `base_url`
(default `https://HOST` when every image name has the same HOST).

OUT is written as a whole: the tree is built beside it and renamed into place, so a
failed export leaves nothing and an existing export is replaced only when the new
one is complete. An existing OUT that is not an earlier export is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from acbuild.atomic import fsync_dir
from acbuild.errors import AcbuildError, UsageError
from acbuild.files import link_or_copy, remove_tree
from acbuild.serve.repository import Repository

GENERATOR = "acbuild serve --export"


def default_base_url(repo: Repository) -> str:
    hosts = sorted({image.name.split("/")[0] for image in repo.images})
    if len(hosts) != 1:
        raise UsageError("serve --export: give --base-url URL (where the export will be served): "
                         + (f"images name several hosts ({', '.join(hosts)})" if hosts else "no images"))
    return f"https://{hosts[0]}"


def export(repo: Repository, out: Path, base_url: str) -> int:
    """Write the static repository for `repo` to `out`; returns the number of files."""
    out = Path(out)
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    try:
        count = _write_tree(repo, tmp, base_url)
        _swap_into_place(tmp, out)
    except OSError as e:
        raise AcbuildError(f"serve --export {out}: {e.strerror or e}") from e
    finally:
        if tmp.exists():
            remove_tree(tmp)
    return count


def _write_tree(repo: Repository, tmp: Path, base_url: str) -> int:
    count = 0
    for url_path, served in sorted(repo.files.items()):
        dest = tmp / url_path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(served.file, dest)
        count += 1
    for page_path in sorted(repo.page_paths):
        dest = tmp / page_path.strip("/") / "index.html"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(repo.discovery_page(page_path, base_url) or b"")
        count += 1
    index = repo.index(base_url)
    index["generator"] = GENERATOR
    (tmp / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the export from the web server
    return count + 1


def _check_replaceable(out: Path) -> None:
    if not out.exists() and not out.is_symlink():
        return
    try:
        previous = json.loads((out / "index.json").read_text()).get("generator")
    except (OSError, ValueError, AttributeError):
        previous = None
    if previous != GENERATOR:
        raise UsageError(f"serve --export: {out} exists and is not an earlier export; remove it or choose another OUT")


def _swap_into_place(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "tree")
    os.rename(tmp, out)
    fsync_dir(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
