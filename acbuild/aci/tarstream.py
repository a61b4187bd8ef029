"""A strict, streaming tar reader for untrusted images: one pass, flat memory,
and every defect is an ImageError naming the byte offset.

Why not tarfile's stream mode: it ends the archive silently at a corrupt header
in the middle (later entries are dropped; Go's archive/tar, and so actool, says
"invalid tar header"), accepts negative sizes, reads a PAX or GNU long-name
header of any size into memory, and lets EOFError and zlib/lzma errors of a
truncated stream escape as tracebacks.

Formats read: POSIX ustar (with the prefix field), GNU (`L`/`K` long names,
base-256 numbers), PAX (`x` per-entry records: path, linkpath, size, uid, gid,
mtime; `g` global headers are skipped), v7. GNU sparse files and multi-volume
entries are refused. The end is two zero blocks; a single zero block followed by
anything but zeros is a corrupt archive.
"""

from __future__ import annotations

import lzma
import zlib
from collections.abc import Callable, Iterator

from acbuild.errors import ImageError
from acbuild.limits import MAX_PATH_DEPTH, MAX_TAR_META_BYTES
from acbuild.records import dataclass

BLOCK = 512
READ_AHEAD = 1 << 16  # bytes asked of the stream at a time (at least)

REGTYPE, AREGTYPE, LNKTYPE, SYMTYPE = b"0", b"\0", b"1", b"2"
CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE, CONTTYPE = b"3", b"4", b"5", b"6", b"7"
_HEADER_ONLY = {LNKTYPE, SYMTYPE, CHRTYPE, BLKTYPE, DIRTYPE, FIFOTYPE}
_REFUSED = {b"S": "GNU sparse file", b"M": "GNU multi-volume entry", b"V": "GNU volume header"}
# Errors a decompressor raises for a damaged or truncated stream.
STREAM_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError)


@dataclass
class Entry:
    """One archive member, with the attributes acbuild uses (tarfile.TarInfo's names)."""

    name: str
    type: bytes
    mode: int
    uid: int
    gid: int
    size: int
    mtime: int
    linkname: str
    devmajor: int
    devminor: int
    offset: int  # of its header, in the uncompressed stream

    def isreg(self) -> bool:
        return self.type in (REGTYPE, AREGTYPE, CONTTYPE)

    def isdir(self) -> bool:
        return self.type == DIRTYPE

    def issym(self) -> bool:
        return self.type == SYMTYPE

    def islnk(self) -> bool:
        return self.type == LNKTYPE

    def ischr(self) -> bool:
        return self.type == CHRTYPE

    def isblk(self) -> bool:
        return self.type == BLKTYPE

    def isfifo(self) -> bool:
        return self.type == FIFOTYPE


def _decode(raw: bytes) -> str:
    # Names are UTF-8 whatever the locale, so a rewrite never alters them.
    return raw.decode("utf-8", "surrogateescape")


def _signed_sum(block: bytes) -> int:
    """The header checksum with bytes taken as signed (some old tars wrote it so)."""
    rest = block[:148] + block[156:]
    return sum(b - 256 if b > 127 else b for b in rest) + 8 * 32


def _cstr(field: bytes) -> bytes:
    end = field.find(b"\0")
    return field if end < 0 else field[:end]


class TarReader:
    """Iterate the entries of the tar stream read by `read(n)`; between two
    entries, `data()` reads the current entry's content (what is not read is
    skipped). `where` names the archive in messages."""

    def __init__(self, read: Callable[[int], bytes], where: str):
        self._read = read
        self.where = where
        self.offset = 0  # bytes consumed so far
        self._left = 0  # unread data bytes of the current entry
        self._pad = 0  # padding after them
        # Read ahead in READ_AHEAD pieces, so that a header costs a slice, not a read call.
        self._buf = b""
        self._pos = 0

    def _bad(self, message: str) -> ImageError:
        return ImageError(message, path=self.where)

    # -- raw stream -----------------------------------------------------------

    def _take(self, n: int, what: str) -> bytes:
        """Exactly n bytes, or an ImageError for a truncated or damaged stream."""
        pos = self._pos
        if len(self._buf) - pos >= n:
            self._pos = pos + n
            self.offset += n
            return self._buf[pos:pos + n]
        out = bytearray(self._buf[pos:])
        self._buf, self._pos = b"", 0
        while len(out) < n:
            try:
                chunk = self._read(max(n - len(out), READ_AHEAD))
            except STREAM_ERRORS as err:
                raise self._bad(f"cannot read: damaged or truncated compressed stream "
                                 f"at tar offset {self.offset + len(out)}: {err}") from None
            if not chunk:
                raise self._bad(f"truncated archive: ends inside {what} at offset {self.offset + len(out)}")
            if not out and len(chunk) >= n:  # the common case: no copy into `out`
                self._buf, self._pos = chunk, n
                self.offset += n
                return chunk[:n] if len(chunk) > n else chunk
            out += chunk
        self._buf, self._pos = bytes(out[n:]), 0
        self.offset += n
        return bytes(out[:n])

    def _skip(self, n: int, what: str) -> None:
        while n:
            step = min(n, 1 << 20)
            self._take(step, what)
            n -= step

    # -- entries --------------------------------------------------------------

    def data(self, n: int = 1 << 20) -> bytes:
        """Up to n more bytes of the current entry's content (b"" at its end)."""
        n = min(n, self._left)
        if n <= 0:
            return b""
        chunk = self._take(n, "an entry's data")
        self._left -= n
        return chunk

    def __iter__(self) -> Iterator[Entry]:
        pax: dict[str, str] = {}
        long_name = long_link = None
        while True:
            self._skip(self._left + self._pad, "an entry's data")
            self._left = self._pad = 0
            at = self.offset
            block = self._take(BLOCK, "a header")
            if block == bytes(BLOCK):
                if self._take(BLOCK, "the end-of-archive marker") != bytes(BLOCK):
                    raise self._bad(f"corrupt archive: a zero block at offset {at} is not followed by another")
                if pax or long_name is not None or long_link is not None:
                    raise self._bad("corrupt archive: extended header at the end without an entry")
                return
            header = self._header(block, at)
            kind = header.type
            if kind in (b"x", b"g", b"L", b"K"):
                if header.size > MAX_TAR_META_BYTES:
                    raise self._bad(f"extended header at offset {at} is {header.size} bytes "
                                     f"(at most {MAX_TAR_META_BYTES})")
                body = self._take(header.size, "an extended header")
                self._skip(-header.size % BLOCK, "an extended header")
                if kind == b"x":
                    pax.update(self._pax(body, at))
                elif kind == b"L":
                    long_name = _decode(_cstr(body))
                elif kind == b"K":
                    long_link = _decode(_cstr(body))
                continue
            if kind in _REFUSED:
                raise self._bad(f"{header.name}: {_REFUSED[kind]} (not supported)")
            self._apply(header, pax, long_name, long_link, at)
            if kind == AREGTYPE and header.name.endswith("/"):  # pre-POSIX directory
                header.type = DIRTYPE
            pax, long_name, long_link = {}, None, None
            if header.name.count("/") >= MAX_PATH_DEPTH:
                raise self._bad(f"{header.name[:200]}...: more than {MAX_PATH_DEPTH} path components")
            self._left = 0 if kind in _HEADER_ONLY else header.size
            self._pad = -self._left % BLOCK
            yield header

    def _header(self, block: bytes, at: int) -> Entry:
        stored = self._number(block[148:156], at, "checksum")
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        if stored != unsigned and stored != _signed_sum(block):
            raise self._bad(f"corrupt archive: bad header checksum at offset {at}")
        name = _cstr(block[0:100])
        if block[257:263] == b"ustar\0":  # POSIX: the prefix field holds the leading part
            prefix = _cstr(block[345:500])
            if prefix:
                name = prefix + b"/" + name
        return Entry(
            name=_decode(name),
            type=block[156:157],
            mode=self._number(block[100:108], at, "mode"),
            uid=self._number(block[108:116], at, "uid"),
            gid=self._number(block[116:124], at, "gid"),
            size=self._number(block[124:136], at, "size"),
            mtime=self._number(block[136:148], at, "mtime"),
            linkname=_decode(_cstr(block[157:257])),
            devmajor=self._number(block[329:337], at, "devmajor"),
            devminor=self._number(block[337:345], at, "devminor"),
            offset=at,
        )

    def _number(self, field: bytes, at: int, what: str) -> int:
        """An octal field, or GNU base-256 (high bit set); negative values are refused."""
        if field[:1] and field[0] & 0x80:
            if field[0] == 0xFF:
                raise self._bad(f"corrupt archive: negative {what} in the header at offset {at}")
            value = field[0] & 0x7F
            for b in field[1:]:
                value = value << 8 | b
            return value
        text = _cstr(field).strip(b" \0")
        if not text:
            return 0
        if text.translate(None, b"01234567"):  # anything left is not an octal digit
            raise self._bad(f"corrupt archive: bad {what} field {field!r} in the header at offset {at}")
        return int(text, 8)

    def _pax(self, body: bytes, at: int) -> dict[str, str]:
        """PAX records, "LEN KEY=VALUE\\n" each, read linearly."""
        out: dict[str, str] = {}
        pos = 0
        while pos < len(body):
            if body[pos:pos + 1] == b"\0":  # padding some writers leave
                break
            space = body.find(b" ", pos, pos + 20)
            length = body[pos:space]
            if space < 0 or not length.isdigit() or int(length) <= space - pos + 1:
                raise self._bad(f"corrupt archive: bad PAX record in the header at offset {at}")
            end = pos + int(length)
            record = body[space + 1:end]
            if end > len(body) or not record.endswith(b"\n") or b"=" not in record:
                raise self._bad(f"corrupt archive: bad PAX record in the header at offset {at}")
            key, _, value = record[:-1].partition(b"=")
            out[_decode(key)] = _decode(value)
            pos = end
        return out

    def _apply(self, e: Entry, pax: dict[str, str], long_name, long_link, at: int) -> None:
        if long_name is not None:
            e.name = long_name
        if long_link is not None:
            e.linkname = long_link
        if "path" in pax:
            e.name = pax["path"]
        if "linkpath" in pax:
            e.linkname = pax["linkpath"]
        for key in ("size", "uid", "gid"):
            if key in pax:
                if not pax[key].isdigit():
                    raise self._bad(f"corrupt archive: PAX {key}={pax[key][:40]!r} "
                                     f"is not a non-negative integer (header at offset {at})")
                setattr(e, key, int(pax[key]))
        if "mtime" in pax:
            try:
                e.mtime = int(float(pax["mtime"]))
            except (ValueError, OverflowError):
                raise self._bad(f"corrupt archive: PAX mtime={pax['mtime'][:40]!r} "
                                 f"(header at offset {at})") from None
        if "\0" in e.name or "\0" in e.linkname:
            raise self._bad(f"corrupt archive: NUL in a name (header at offset {at})")
