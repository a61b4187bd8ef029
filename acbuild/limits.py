"""Input limits: every bound on what a hostile ACIfile, ignore file, context or
image may make acbuild do, in one place, with the checks that enforce them.

The numbers are far above anything a real build needs and low enough that each
check answers in well under a second; each refusal names the limit. The image
size limit alone is a setting (flag, ACBUILD_MAX_IMAGE_SIZE, acbuild.toml),
since real images differ by orders of magnitude.
"""

from __future__ import annotations

import os
import stat

from acbuild.errors import ParseError, PlanError, SourcePos, UsageError

# ACIfile (and acbuild-script) text.
MAX_ACIFILE_BYTES = 1 << 20
MAX_ACIFILE_LINES = 20_000
# One word after ARG/ENV substitution (a doubling chain of ARGs is refused here).
MAX_EXPANDED_WORD = 256 << 10
# Nesting of the JSON in EXEC/RUN/EVENT exec form, ISOLATOR and MANIFEST.
MAX_JSON_DEPTH = 100

# RUN's and launch's /tmp, /run and /dev/shm, each: a step cannot fill the host's memory.
# Here, not in engine/execute/hardening.py, so the CLI's --help can show it without
# loading that module (it opens libc with ctypes at import).
DEFAULT_TMPFS_SIZE = 512 << 20

# .acbuildignore.
MAX_IGNORE_BYTES = 1 << 20
MAX_IGNORE_PATTERN = 4096

# .aci archives. appc/actool read the manifest whole (ioutil.ReadAll) with no
# bound; real manifests are a few KiB.
MAX_MANIFEST_BYTES = 1 << 20
# PAX and GNU long-name headers (Go's archive/tar uses the same 1 MiB).
MAX_TAR_META_BYTES = 1 << 20
# Components in one archive entry name: PATH_MAX (4096 bytes) holds at most 2,048
# one-letter components, so no path a build can name by full path is deeper.
MAX_PATH_DEPTH = 2048
# Symlinks followed while resolving one link inside an archive (Linux: 40).
MAX_SYMLINK_HOPS = 40
# Uncompressed bytes of one image: the default of the image size setting.
DEFAULT_MAX_IMAGE_SIZE = 16 << 30
MAX_IMAGE_SIZE_ENV = "ACBUILD_MAX_IMAGE_SIZE"

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, what: str) -> int:
    """"1048576", "512M", "16G", "2GiB" -> bytes; UsageError naming `what` otherwise."""
    s = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS else ""
    number = s[: len(s) - len(unit)]
    if not number.isdigit() or int(number) <= 0:
        raise UsageError(f"{what}: {text!r} is not a size (a positive number of bytes, or with K, M, G or T)")
    return int(number) * _UNITS[unit]


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]} {unit}iB"
    return f"{n} bytes"


_flag_max_image_size: int | None = None


def set_max_image_size(size: int | None) -> None:
    """The --max-image-size flag (set once by the CLI)."""
    global _flag_max_image_size
    _flag_max_image_size = size


def max_image_size() -> int:
    """The image size limit: --max-image-size, else $ACBUILD_MAX_IMAGE_SIZE, else
    max-image-size in the default acbuild.toml, else the default (16 GiB)."""
    if _flag_max_image_size:
        return _flag_max_image_size
    env = os.environ.get(MAX_IMAGE_SIZE_ENV, "")
    if env:
        return parse_size(env, MAX_IMAGE_SIZE_ENV)
    from acbuild.config import load_config

    config = load_config()
    if config.max_image_size:
        return parse_size(config.max_image_size, f"{config.source}: max-image-size")
    return DEFAULT_MAX_IMAGE_SIZE


def read_regular_file(path, what: str, max_bytes: int, error=UsageError) -> bytes:
    """The bytes of `path`, refusing at once what is not a regular file (a FIFO
    would block forever, a device never ends) or is larger than `max_bytes`.
    FileNotFoundError passes through; other OSErrors become `error`."""
    try:
        # O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise error(f"cannot read {what}: {err.strerror}", path=path) from err
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} is not a regular file", path=path)
        if st.st_size > max_bytes:
            raise error(f"{what} is {st.st_size} bytes (the limit is {max_bytes})", path=path)
        with open(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
    except OSError as err:
        raise error(f"cannot read {what}: {err.strerror}", path=path) from err
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise error(f"{what} is more than {max_bytes} bytes", path=path)
    return data


def check_acifile_text(text: str, filename: str) -> None:
    """Refuse ACIfile text that no build needs and that would make parsing slow
    or fail deep inside: too many bytes or lines, NUL bytes."""
    size = len(text.encode("utf-8", "surrogateescape"))
    if size > MAX_ACIFILE_BYTES:
        raise ParseError(f"{filename}: {size} bytes (an ACIfile may have at most {MAX_ACIFILE_BYTES})")
    lines = text.count("\n") + 1
    if lines > MAX_ACIFILE_LINES:
        raise ParseError(f"{filename}: {lines} lines (an ACIfile may have at most {MAX_ACIFILE_LINES})")
    nul = text.find("\0")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        start = text.rfind("\n", 0, nul) + 1
        end = text.find("\n", nul)
        source = text[start: end if end >= 0 else len(text)]
        raise ParseError("NUL byte in the ACIfile",
                           SourcePos(filename, line, nul - start + 1, source.replace("\0", "\\0")))


def check_json_depth(text: str, what: str, pos: SourcePos | None = None, *, limit: int = MAX_JSON_DEPTH,
                     error=PlanError) -> None:
    """Refuse JSON nested deeper than `limit` before json.loads recurses into it
    (a linear scan: brackets inside strings do not count)."""
    depth = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                raise error(f"{what}: JSON nested more than {limit} levels deep", pos)
        elif ch in "]}":
            depth -= 1


def check_expanded_size(size: int, pos: SourcePos | None) -> None:
    """Refuse a word that $VARIABLE substitution grows past the limit (checked as
    it grows, so a doubling chain of ARGs stops before it fills memory)."""
    if size > MAX_EXPANDED_WORD:
        raise PlanError(f"variable substitution makes a word of more than {MAX_EXPANDED_WORD} characters", pos)
