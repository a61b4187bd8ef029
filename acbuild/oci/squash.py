"""Image layers, base first, squashed into one .aci without unpacking them:
what a container runtime shows as the image's root filesystem.

`index()` reads each layer once, through acbuild.aci.tarstream (the strict tar
reader that decides what a well-formed entry is, as it does for .aci files): it
keeps the headers as the tree they leave and copies each regular file's content
into one anonymous spool file. The tree follows the OCI image spec's "Applying
changesets":
- `DIR/.wh.NAME` deletes NAME (and everything under it) from the lower layers;
- `DIR/.wh..wh..opq` makes DIR opaque: what lower layers had in DIR goes, what
  this layer puts there stays (wherever the marker sits in the tar);
- an entry replaces what was at its path (a directory over a directory merges);
- a hard link names an inode, so it keeps the content its target had, even if
  a later layer replaces or deletes the target (file identity is tracked);
- character and block devices are not kept (listed in `skipped`): a converted
  image gets its /dev from the runtime.
`write_squashed()` then writes each surviving entry into the .aci
(acbuild.aci.writer's AciSink: hashed, compressed, atomic), in layer order, the
first path of each inode as the file and the others as hard links to it, the
content from the spool. Owners, modes and times come from the tar headers
(mtimes clamped to the epoch), so no privilege is needed.

Why not top-down in one pass: the .aci lists entries base layer first (its
bytes, hence its image ID, are kept as they were), so the upper layers' content
waits somewhere either way; and a base file that an upper layer deletes may
still be the content of a later hard link in the base, which a reader going top
down cannot know when it skips the file. The spool holds every file once; what
the upper layers shadow costs a copy into the page cache, no second read.

Nothing is written to disk but the .aci and the spool, so a hostile layer has no
filesystem to escape; names with `..`, symlinks whose target leaves the root
(lexically, and once the tree is complete, through the other symlinks of all
layers, as acbuild.aci.archive resolves an .aci's links) and entries under a
symlinked directory are refused anyway, as they are in an .aci. Layer blobs are
verified while they stream (Layer.open), and the uncompressed tar against the
config's diff_id.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from acbuild.aci.archive import escapes_root
from acbuild.aci.pgzip import gunzip_reader
from acbuild.aci.readahead import ReadAhead
from acbuild.aci.tarformat import BLOCK, ZERO_BLOCK, tar_header
from acbuild.aci.tarstream import AREGTYPE, DIRTYPE, LNKTYPE, REGTYPE, STREAM_ERRORS, Entry, TarReader
from acbuild.errors import ImageError
from acbuild.oci.blobs import DigestReader
from acbuild.oci.layout import Layer
from acbuild.records import dataclass, field

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
CHUNK = 1 << 20
_DIR_INFO = Entry("", DIRTYPE, 0o755, 0, 0, 0, 0, "", 0, 0, 0)


@dataclass
class Node:
    """One path of the squashed tree. `source` is the (layer, ordinal) of the tar
    entry that made it (None for a directory no layer named: made 0755 root, as
    runtimes do). Files and hard links share an `inode`."""

    info: Entry
    source: tuple[int, int] | None
    layer: int
    inode: int | None = None
    children: dict[str, Node] | None = None  # directories only


@dataclass
class Squash:
    """The tree, and the layers' entries and file contents as read (close() frees the spool)."""

    layers: list[Layer]
    root: Node = field(default_factory=lambda: Node(_DIR_INFO, None, -1, children={}))
    # inode -> the (layer, ordinal) and header of the entry holding its content
    contents: dict[int, tuple[tuple[int, int], Entry]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)  # device nodes not kept
    # --no-squash: per layer, hard links to a lower layer's inode ((layer, ordinal) -> inode)
    lower_links: dict[tuple[int, int], int] = field(default_factory=dict)
    entries: list[list[Entry]] = field(default_factory=list)  # per layer, in tar order
    # (layer, ordinal) of a regular file -> where its content starts in the spool
    data: dict[tuple[int, int], int] = field(default_factory=dict)
    spool: BinaryIO | None = None
    spooled: int = 0  # bytes in the spool (its tell(), without the syscall)

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None

    def __enter__(self) -> Squash:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def copy_content(self, key: tuple[int, int], size: int, sink) -> None:
        """The content of the regular file (layer, ordinal) `key`, and its padding, into `sink`."""
        assert self.spool is not None
        fd, offset = self.spool.fileno(), self.data[key]
        left = size
        while left:
            piece = os.pread(fd, min(left, CHUNK), offset)
            if not piece:
                raise ImageError(f"spool file ended early at offset {offset}")
            sink.write(piece)
            offset += len(piece)
            left -= len(piece)
        if size % BLOCK:
            sink.write(ZERO_BLOCK[: -size % BLOCK])


class _Prefixed:
    """`head` followed by the rest of `inner` (we peek at the magic number)."""

    def __init__(self, head: bytes, inner: BinaryIO):
        self.head, self.inner = head, inner

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n is None or n < 0:
                data, self.head = self.head + self.inner.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            if len(data) < n:
                data += self.inner.read(n - len(data))
            return data
        return self.inner.read(n)


@contextmanager
def _layer_tar(layer: Layer) -> Iterator[TarReader]:
    """The layer's tar entries, streamed and strictly parsed; after the reader is
    exhausted, `_finish_layer` checks the blob's digest and the uncompressed
    tar's diff_id."""
    with layer.open() as blob:
        head = blob.read(4)
        if head == b"\x28\xb5\x2f\xfd":
            raise ImageError(f"layer {layer.what}: zstd-compressed layers are not supported (Python has no zstd)")
        stream: BinaryIO = _Prefixed(head, blob)  # type: ignore[assignment]
        if head.startswith(b"\x1f\x8b"):
            stream = gunzip_reader(stream)
        checked = DigestReader(stream, layer.diff_id, what=f"layer {layer.what} (uncompressed)") \
            if layer.diff_id else stream
        ahead = ReadAhead(checked.read, name="acbuild-layer-read")
        try:
            tar = TarReader(ahead.read, f"layer {layer.what}")
            yield tar
            ahead.close()
            if isinstance(checked, DigestReader):
                checked.check()
            if isinstance(blob, DigestReader):
                blob.check()
        except STREAM_ERRORS as e:  # from the checks' reads of the rest
            raise ImageError(f"layer {layer.what}: {e}") from e
        finally:
            ahead.close()


def _parts(name: str, what: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer {what}: refusing entry {name!r} ('..' in the name)")
    return parts


# ---------------------------------------------------------------- reading: the tree and the spool


def index(layers: list[Layer]) -> Squash:
    """The squashed tree of `layers`, each read once (see the module docstring);
    close the Squash (or use it with `with`) to free its spool."""
    squash = Squash(layers, spool=tempfile.TemporaryFile(prefix="acbuild-squash-"))
    try:
        inodes = iter(range(1 << 62))
        for i, layer in enumerate(layers):
            added: set[int] = set()  # id()s of the nodes this layer made (opaque dirs keep them)
            kept: list[Entry] = []
            squash.entries.append(kept)
            with _layer_tar(layer) as tar:
                for k, m in enumerate(tar):
                    kept.append(m)
                    if m.isreg() and m.size:
                        _spool(squash, (i, k), tar)
                    _index_entry(squash, i, k, m, added, inodes)
        _check_links(squash)
        squash.spool.flush()  # type: ignore[union-attr]  # copy_content reads the fd
    except BaseException:
        squash.close()
        raise
    return squash


def _spool(squash: Squash, key: tuple[int, int], tar: TarReader) -> None:
    assert squash.spool is not None
    squash.data[key] = squash.spooled
    try:
        while piece := tar.data(CHUNK):
            squash.spool.write(piece)
            squash.spooled += len(piece)
    except OSError as e:
        raise ImageError(f"spool file: {e}") from e


def _check_links(squash: Squash) -> None:
    """Each symlink of the squashed tree, resolved through all the others (a layer
    may point into a link a lower one made), stays inside the root."""
    links: dict[str, str] = {}
    made: dict[str, int] = {}

    def walk(node: Node, prefix: str) -> None:
        for name, child in (node.children or {}).items():
            path = f"{prefix}/{name}" if prefix else name
            if child.info.issym():
                links[path], made[path] = child.info.linkname, child.layer
            walk(child, path)

    walk(squash.root, "")
    for path, target in links.items():
        if escapes_root(path.split("/")[:-1], target, links):
            raise ImageError(f"layer {squash.layers[made[path]].what}: refusing /{path}: symlink target "
                             f"{target!r} escapes rootfs (through the symlinks of the layers)")


def _index_entry(squash: Squash, i: int, k: int, m: Entry, added: set[int], inodes) -> None:
    what = squash.layers[i].what
    parts = _parts(m.name, what)
    if not parts:
        if m.isdir():
            squash.root.info, squash.root.source = m, (i, k)
        return
    base, parent_parts = parts[-1], parts[:-1]
    path = "/" + "/".join(parts)
    parent = _directory(squash, parent_parts, i, path, added, create=not base.startswith(WHITEOUT))
    if base == OPAQUE:
        if parent is not None:
            _make_opaque(parent, added)
        return
    if base.startswith(WHITEOUT):
        if parent is not None and parent.children is not None:
            parent.children.pop(base[len(WHITEOUT):], None)
        return
    assert parent is not None and parent.children is not None
    if m.ischr() or m.isblk():
        squash.skipped.append(path)
        parent.children.pop(base, None)
        return
    if m.issym() and escapes_root(parent_parts, m.linkname):
        raise ImageError(f"layer {what}: refusing {path}: symlink target {m.linkname!r} leaves the root")
    old = parent.children.get(base)
    if m.isdir():
        if old is not None and old.children is not None:
            old.info, old.source, old.layer = m, (i, k), i  # a directory over a directory merges
            added.add(id(old))
            return
        node = Node(m, (i, k), i, children={})
    elif m.islnk():
        target = _lookup(squash, _parts(m.linkname, what))
        if target is None or target.inode is None:
            raise ImageError(f"layer {what}: {path}: hard link target /{m.linkname.lstrip('/')} does not exist "
                             "or is not a file")
        node = Node(m, (i, k), i, inode=target.inode)
        if squash.contents[target.inode][0][0] != i:
            squash.lower_links[(i, k)] = target.inode
    elif m.isreg():
        node = Node(m, (i, k), i, inode=next(inodes))
        squash.contents[node.inode] = ((i, k), m)  # type: ignore[index]
    else:  # symlink, fifo
        node = Node(m, (i, k), i)
    parent.children[base] = node
    added.add(id(node))


def _directory(squash: Squash, parts: list[str], i: int, entry: str, added: set[int], create: bool) -> Node | None:
    """The directory node at `parts` (for the entry `entry` of layer `i`); missing
    ones are made (when `create`), a symlink on the way is refused (the entry would
    land elsewhere)."""
    node = squash.root
    for n, name in enumerate(parts):
        assert node.children is not None
        child = node.children.get(name)
        if child is None or child.children is None:
            if child is not None and child.info.issym():
                raise ImageError(f"layer {squash.layers[i].what}: refusing {entry}: "
                                 f"/{'/'.join(parts[:n + 1])} is a symlink")
            if not create:
                return None
            child = Node(_DIR_INFO, None, i, children={})
            node.children[name] = child
            added.add(id(child))
        node = child
    return node


def _lookup(squash: Squash, parts: list[str]) -> Node | None:
    node: Node | None = squash.root
    for name in parts:
        if node is None or node.children is None:
            return None
        node = node.children.get(name)
    return node


def _make_opaque(directory: Node, added: set[int]) -> None:
    """Drop what lower layers left in `directory`; keep what this layer made."""
    assert directory.children is not None
    for name, child in list(directory.children.items()):
        if id(child) not in added:
            del directory.children[name]
        elif child.children is not None:
            _make_opaque(child, added)


def paths(squash: Squash) -> list[str]:
    """Every path in the squashed tree, sorted (the --no-squash pathWhitelist)."""
    out: list[str] = []

    def walk(node: Node, prefix: str) -> None:
        for name, child in (node.children or {}).items():
            out.append(f"{prefix}/{name}")
            walk(child, f"{prefix}/{name}")

    walk(squash.root, "")
    return sorted(out)


# ---------------------------------------------------------------- writing: the .aci


@dataclass(frozen=True)
class _Emit:
    name: str  # under rootfs/
    info: Entry  # the header fields to write
    link: str = ""  # for a hard link: the earlier name (under rootfs/)


def _plan(squash: Squash) -> tuple[dict[tuple[int, int], list[_Emit]], list[_Emit]]:
    """What to write when each (layer, ordinal) comes by, and the directories no
    layer named (written first)."""
    plan: dict[tuple[int, int], list[_Emit]] = {}
    implicit: list[_Emit] = []
    groups: dict[int, list[str]] = {}

    def walk(node: Node, prefix: str) -> None:
        for name in sorted(node.children or {}):
            child = node.children[name]  # type: ignore[index]
            path = f"{prefix}/{name}"
            if child.inode is not None:
                groups.setdefault(child.inode, []).append(path)
            elif child.source is None:
                implicit.append(_Emit(path, child.info))
            else:
                plan.setdefault(child.source, []).append(_Emit(path, child.info))
            walk(child, path)

    walk(squash.root, "rootfs")
    for inode, names in groups.items():
        source, info = squash.contents[inode]
        first = names[0]
        plan.setdefault(source, []).append(_Emit(first, info))
        plan[source] += [_Emit(name, info, link=first) for name in names[1:]]
    return plan, implicit


def _header(e: _Emit, epoch: int) -> bytes:
    m = e.info
    mtime = max(0, min(int(m.mtime), epoch))
    name = e.name.encode("utf-8", "surrogateescape")
    if e.link:
        return tar_header(name, LNKTYPE, mode=m.mode, uid=m.uid, gid=m.gid, mtime=mtime,
                          linkname=e.link.encode("utf-8", "surrogateescape"))
    kind = REGTYPE if m.type == AREGTYPE or m.isreg() else m.type
    return tar_header(name, kind, mode=m.mode, uid=m.uid, gid=m.gid, size=m.size if m.isreg() else 0,
                      mtime=mtime, linkname=m.linkname.encode("utf-8", "surrogateescape") if m.issym() else b"")


def write_squashed(squash: Squash, sink, epoch: int) -> None:
    """The rootfs entries of the squashed image into `sink` (an AciSink)."""
    plan, implicit = _plan(squash)
    sink.write(_header(_Emit("rootfs", squash.root.info), epoch))
    for e in implicit:
        sink.write(_header(e, epoch))
    for key in sorted(plan):  # layer order, then tar order
        for e in plan[key]:
            sink.write(_header(e, epoch))
            if not e.link and e.info.isreg() and e.info.size:
                squash.copy_content(key, e.info.size, sink)


def write_layer(squash: Squash, i: int, sink, epoch: int) -> None:
    """Layer `i` alone (for --no-squash): its entries without whiteout markers or
    devices; a hard link to a lower layer's file is a copy of that file."""
    sink.write(_header(_Emit("rootfs", _DIR_INFO), epoch))
    layer = squash.layers[i]
    for k, m in enumerate(squash.entries[i]):
        parts = _parts(m.name, layer.what)
        if not parts or parts[-1].startswith(WHITEOUT) or m.ischr() or m.isblk():
            continue
        name = "rootfs/" + "/".join(parts)
        if (i, k) in squash.lower_links:
            source, info = squash.contents[squash.lower_links[(i, k)]]
            sink.write(_header(_Emit(name, info), epoch))
            if info.size:
                squash.copy_content(source, info.size, sink)
        elif m.islnk():
            link = "rootfs/" + "/".join(_parts(m.linkname, layer.what))
            sink.write(_header(_Emit(name, m, link=link), epoch))
        else:
            sink.write(_header(_Emit(name, m), epoch))
            if m.isreg() and m.size:
                squash.copy_content((i, k), m.size, sink)
