"""The tar format as acbuild writes it: POSIX ustar header blocks, with a PAX
`x` record first when a field does not fit (long names and link targets, ids
above 2097151, sizes of 8 GiB and more). Pure functions: the same fields give
the same bytes. Used by the .aci writer and by the archive reader (which
re-emits entries when it copies a rootfs)."""

from __future__ import annotations

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
_MAX_ID = 0o7777777  # largest uid/gid a 7-digit ustar field holds
_MAX_SIZE = 0o77777777777
MAX_MTIME = 0o77777777777  # 11 octal digits: 2242-03-16
_PAX_NAME = b"././@PaxHeader"


# --- tar headers -----------------------------------------------------------


def _octal(value: int, size: int) -> bytes:
    return b"%0*o\0" % (size - 1, value)


def _pad(value: bytes, size: int) -> bytes:
    return value + b"\0" * (size - len(value))


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """(prefix, name) for the ustar fields, or None when the name needs PAX."""
    if len(name) <= 100:
        return b"", name
    i = name.rfind(b"/", 0, min(len(name), 156))
    if i <= 0 or len(name) - i - 1 > 100 or i == len(name) - 1:
        return None
    return name[:i], name[i + 1 :]


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(b"%d" % n) + len(body) != n:
        n = len(b"%d" % n) + len(body)
    return b"%d" % n + body


def _block(
    name: bytes,
    prefix: bytes,
    mode: int,
    uid: int,
    gid: int,
    size: int,
    mtime: int,
    typeflag: bytes,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    head = b"".join(
        (
            _pad(name, 100),
            _octal(mode, 8),
            _octal(uid, 8),
            _octal(gid, 8),
            _octal(size, 12),
            _octal(mtime, 12),
            b"        ",
            typeflag,
            _pad(linkname, 100),
            b"ustar\x0000",
            bytes(64),  # uname, gname: empty
            _octal(devmajor, 8),
            _octal(devminor, 8),
            _pad(prefix, 155),
            bytes(12),
        )
    )
    chksum = b"%06o\0 " % sum(head)
    return head[:148] + chksum + head[156:]


def tar_header(
    name: bytes,
    typeflag: bytes,
    *,
    mode: int,
    uid: int = 0,
    gid: int = 0,
    size: int = 0,
    mtime: int = 0,
    linkname: bytes = b"",
    devmajor: int = 0,
    devminor: int = 0,
) -> bytes:
    """The header block(s) for one entry: ustar, with a PAX record first when a
    field does not fit. Deterministic: the same fields give the same bytes."""
    pax: list[bytes] = []
    split = _split_ustar(name)
    if split is None:
        pax.append(_pax_record(b"path", name))
        split = b"", name[:100]
    if len(linkname) > 100:
        pax.append(_pax_record(b"linkpath", linkname))
        linkname = linkname[:100]
    if uid > _MAX_ID:
        pax.append(_pax_record(b"uid", b"%d" % uid))
        uid = 0
    if gid > _MAX_ID:
        pax.append(_pax_record(b"gid", b"%d" % gid))
        gid = 0
    if size > _MAX_SIZE:
        pax.append(_pax_record(b"size", b"%d" % size))
    block = _block(split[1], split[0], mode & 0o7777, uid, gid, size if size <= _MAX_SIZE else 0,
                   min(mtime, MAX_MTIME), typeflag, linkname, devmajor, devminor)
    if not pax:
        return block
    records = b"".join(pax)
    pad = -len(records) % BLOCK
    return _block(_PAX_NAME, b"", 0o644, 0, 0, len(records), 0, b"x") + records + bytes(pad) + block


def file_member(name: bytes, data: bytes, *, mode: int = 0o644, mtime: int = 0) -> bytes:
    """A whole regular-file entry (header, content, padding) for small content held
    in memory (typeflag "0": a regular file): the .aci manifest, OCI JSON documents,
    step cache entries."""
    return tar_header(name, b"0", mode=mode, size=len(data), mtime=mtime) + data + ZERO_BLOCK[: -len(data) % BLOCK]
