"""Hostile .aci archives through validate, FROM, begin and launch: each ends in
one clear error, bounded in time and memory, and the same verdict everywhere
(acbuild.aci.archive is the one reader). Archives are made by hand here:
truncated streams, corrupt headers, PAX tricks, link chains, bombs.

The tests that extract a hostile tree do it with TMPDIR on a size-limited tmpfs
the test mounts (as root), so a runaway extraction cannot fill the host."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import require
from tests.hostile import QUICK_BOUND, acbuild, assert_clear_error, write

MANIFEST = (b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/hostile",'
            b'"labels":[{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}]}')


# ------------------------------------------------------------ making archives


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, linkname: str = "",
           fmt: int = tarfile.PAX_FORMAT, **attrs) -> bytes:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    info.mtime = 1_600_000_000
    for key, value in attrs.items():
        setattr(info, key, value)
    block = info.tobuf(fmt, "utf-8", "surrogateescape")
    return block + data + bytes(-len(data) % 512)


def image(*members: bytes, manifest: bytes = MANIFEST, end: bool = True) -> bytes:
    """manifest + rootfs + members, as an uncompressed tar."""
    out = member("manifest", manifest) + member("rootfs", kind=tarfile.DIRTYPE) + b"".join(members)
    return out + bytes(1024) if end else out


def fixed_checksum(block: bytes) -> bytes:
    """A header block with its checksum recomputed after an edit."""
    block = bytearray(block)
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def pax_header(records: dict[str, str]) -> bytes:
    body = b""
    for key, value in records.items():
        rec = f" {key}={value}\n".encode()
        n = len(rec) + len(str(len(rec)))
        n = len(rec) + len(str(n))
        body += str(n).encode() + rec
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = len(body)
    return info.tobuf(tarfile.USTAR_FORMAT) + body + bytes(-len(body) % 512)


def save(tmp_path: Path, raw: bytes, compression: str = "gzip", name: str = "hostile.aci") -> Path:
    packed = {"gzip": lambda b: gzip.compress(b, mtime=0), "xz": lzma.compress, "bzip2": bz2.compress,
              "none": lambda b: b}[compression](raw)
    return write(tmp_path / name, packed)


# ------------------------------------------------------------ running every reader


@pytest.fixture
def small_tmp(tmp_path):
    """A 64 MiB tmpfs as TMPDIR and for the outputs: extraction cannot fill the host."""
    require(os.geteuid() == 0, "mounting a tmpfs needs root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0755", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def env_with(tmp: Path, **extra) -> dict[str, str]:
    env = dict(os.environ, TMPDIR=str(tmp))
    env.update(extra)
    return env


def every_reader(aci: Path, tmp: Path, env=None, launch: bool = True):
    """validate, FROM, begin (and launch as root): each result, by name."""
    env = env or env_with(tmp)
    ctx = tmp / "ctx"
    write(ctx / "ACIfile", f"FROM {aci}\nNAME example.com/out\n")
    work = tmp / "work"
    work.mkdir(exist_ok=True)
    results = {
        "validate": acbuild("validate", aci, env=env),
        "FROM": acbuild("build", "-f", ctx / "ACIfile", "-o", tmp / "out.aci", "--cache-dir", tmp / "cache",
                        "--insecure-skip-verify", env=env),
        "begin": acbuild("--work-path", work, "begin", "--insecure-skip-verify", aci, env=env),
    }
    if launch and os.geteuid() == 0:
        results["launch"] = acbuild("launch", "--insecure-skip-verify", aci, env=env)
    acbuild("--work-path", work, "end", env=env)
    return results


def assert_refused_everywhere(results, *needles: str) -> None:
    for name, result in results.items():
        try:
            assert_clear_error(result, *needles)
        except AssertionError as err:
            raise AssertionError(f"{name}: {err}") from None
        assert result.elapsed < QUICK_BOUND, f"{name} took {result.elapsed:.1f} s"


def leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.iterdir() if p.name.startswith("acbuild-"))


# ------------------------------------------------------------ truncated streams


@pytest.mark.parametrize("compression", ["gzip", "xz", "bzip2", "none"])
def test_truncated_stream_is_one_clear_error(tmp_path, compression):
    raw = image(member("rootfs/big", os.urandom(300_000)))
    whole = save(tmp_path, raw, compression)
    cut = write(tmp_path / "cut.aci", whole.read_bytes()[: whole.stat().st_size * 2 // 3])
    assert_refused_everywhere(every_reader(cut, tmp_path), "truncated")


# ------------------------------------------------------------ headers


def test_corrupt_header_in_the_middle_is_refused_not_the_end(tmp_path):
    """tarfile ended the archive there: validate said ok and later entries vanished."""
    good = member("rootfs/a", b"a")
    broken = bytearray(member("rootfs/b", b"b"))
    broken[0:10] = b"XXXXXXXXXX"  # checksum no longer matches
    raw = image(good, bytes(broken), member("rootfs/c", b"c"))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "checksum")


def test_pax_header_with_a_huge_size_is_refused_at_once(tmp_path):
    info = tarfile.TarInfo("././@PaxHeader")
    info.type = tarfile.XHDTYPE
    info.size = 0
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    block[124:136] = b"\x80" + (1 << 62).to_bytes(11, "big")  # base-256: 4 EiB of PAX records
    raw = image(fixed_checksum(bytes(block)), member("rootfs/a", b"a"))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "extended header")


def test_pax_size_record_that_is_negative_or_huge_is_refused(tmp_path):
    for value, needle in (("-5", "not a non-negative integer"), (str(1 << 60), "truncated")):
        raw = image(pax_header({"size": value}) + member("rootfs/a", b"a", fmt=tarfile.USTAR_FORMAT))
        assert_refused_everywhere(every_reader(save(tmp_path, raw, name=f"p{len(value)}.aci"), tmp_path,
                                               launch=False), needle)


def test_negative_base256_size_is_refused(tmp_path):
    block = bytearray(member("rootfs/a", b"", fmt=tarfile.GNU_FORMAT))
    block[124:136] = b"\xff" * 12  # base-256 -1
    raw = image(fixed_checksum(bytes(block[:512])))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "negative size")


# ------------------------------------------------------------ layout and links


def test_symlink_escaping_through_another_symlink_is_refused(tmp_path):
    """rootfs/a/b/up -> "/" is harmless alone; rootfs/a/b/out -> "up/.." resolves,
    through it, above rootfs, though lexically it stays at rootfs/a/b."""
    raw = image(member("rootfs/a", kind=tarfile.DIRTYPE), member("rootfs/a/b", kind=tarfile.DIRTYPE),
                member("rootfs/a/b/up", kind=tarfile.SYMTYPE, linkname="/"),
                member("rootfs/a/b/out", kind=tarfile.SYMTYPE, linkname="up/../etc"))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "escapes rootfs")


def test_link_chain_defined_in_the_other_order_is_refused(tmp_path):
    raw = image(member("rootfs/a", kind=tarfile.DIRTYPE),
                member("rootfs/a/out", kind=tarfile.SYMTYPE, linkname="up/../.."),
                member("rootfs/a/up", kind=tarfile.SYMTYPE, linkname="/"))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "escapes rootfs")


def test_symlink_loop_is_judged_in_bounded_time(tmp_path):
    """A loop reaches nothing (the kernel answers ELOOP): accepted, not followed forever."""
    raw = image(member("rootfs/x", kind=tarfile.SYMTYPE, linkname="y/.."),
                member("rootfs/y", kind=tarfile.SYMTYPE, linkname="x/.."),
                member("rootfs/self", kind=tarfile.SYMTYPE, linkname="self"))
    result = acbuild("validate", save(tmp_path, raw), timeout=QUICK_BOUND)
    assert result.returncode == 0, result.stdout + result.stderr


def test_inner_links_that_stay_inside_are_accepted(tmp_path):
    raw = image(member("rootfs/usr", kind=tarfile.DIRTYPE), member("rootfs/usr/lib", kind=tarfile.DIRTYPE),
                member("rootfs/lib", kind=tarfile.SYMTYPE, linkname="usr/lib"),
                member("rootfs/usr/lib/self", kind=tarfile.SYMTYPE, linkname="../../lib/.."),
                member("rootfs/abs", kind=tarfile.SYMTYPE, linkname="/lib/../usr"))
    result = acbuild("validate", save(tmp_path, raw))
    assert result.returncode == 0, result.stdout + result.stderr


def test_two_manifests_are_refused_by_every_reader(tmp_path):
    raw = image(member("manifest", MANIFEST))
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "duplicate")


def test_rootfs_symlink_is_refused_by_every_reader(tmp_path):
    raw = member("manifest", MANIFEST) + member("rootfs", kind=tarfile.SYMTYPE, linkname="/") + bytes(1024)
    assert_refused_everywhere(every_reader(save(tmp_path, raw), tmp_path), "rootfs")


# ------------------------------------------------------------ bombs


def test_ten_thousand_nested_directories_end_quickly_and_leave_nothing(small_tmp):
    """341 KB that made FROM run 11 minutes at 767 MB, end in RecursionError and
    leave the tree in TMPDIR."""
    names, path = [], "rootfs"
    for _ in range(10_000):
        path += "/d"
        names.append(member(path, kind=tarfile.DIRTYPE))
    aci = save(small_tmp, image(*names), "xz")
    assert aci.stat().st_size < 2 << 20
    assert_refused_everywhere(every_reader(aci, small_tmp), "path components")
    assert leftovers(small_tmp) == []


def test_2000_nested_directories_extract_and_clean_up(small_tmp):
    names, path = [], "rootfs"
    for _ in range(2000):
        path += "/d"
        names.append(member(path, kind=tarfile.DIRTYPE))
    aci = save(small_tmp, image(*names, member(path + "/leaf", b"leaf")))
    work = small_tmp / "work"
    work.mkdir()
    env = env_with(small_tmp)
    begin = acbuild("--work-path", work, "begin", "--insecure-skip-verify", aci, env=env)
    assert begin.returncode == 0, begin.stderr[-2000:]
    end = acbuild("--work-path", work, "end", env=env)
    assert end.returncode == 0, end.stderr[-2000:]
    assert not (work / ".acbuild").exists()
    assert leftovers(small_tmp) == []


def test_many_big_manifests_are_refused_in_flat_memory(tmp_path):
    """40 manifest entries of 15 MiB took 1.27 GB RSS."""
    big = b'{"acKind":"ImageManifest","x":"' + b"a" * (15 << 20) + b'"}'
    raw = image(*(member("manifest", big) for _ in range(3)))
    aci = save(tmp_path, raw)
    # VmHWM: this process's peak RSS (ru_maxrss would include the forking parent's).
    script = ("import re\nfrom acbuild.aci.validate import validate_path\n"
              f"print(validate_path({str(aci)!r}))\n"
              "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n")
    out = subprocess.run([__import__("sys").executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    problems, rss_kib = out.stdout.strip().splitlines()
    assert "manifest" in problems and "bytes" in problems
    assert int(rss_kib) < 200 << 10, f"{rss_kib} KiB"
    assert_refused_everywhere(every_reader(aci, tmp_path, launch=False), "manifest")


def test_expansion_bomb_stops_at_the_configured_limit(small_tmp):
    """A few hundred bytes that expand to 1 GiB (10 GiB took minutes and the disk):
    the limit applies to every reader, set by flag, environment or acbuild.toml."""
    body = io.BytesIO()
    with gzip.GzipFile(fileobj=body, mode="wb", mtime=0, compresslevel=9) as gz:
        gz.write(member("manifest", MANIFEST) + member("rootfs", kind=tarfile.DIRTYPE))
        info = tarfile.TarInfo("rootfs/zero")
        info.size = 1 << 30
        gz.write(info.tobuf(tarfile.PAX_FORMAT))
        chunk = bytes(1 << 20)
        for _ in range(1 << 10):
            gz.write(chunk)
        gz.write(bytes(1024))
    aci = write(small_tmp / "bomb.aci", body.getvalue())
    assert aci.stat().st_size < 2 << 20
    env = env_with(small_tmp, ACBUILD_MAX_IMAGE_SIZE="32M")
    assert_refused_everywhere(every_reader(aci, small_tmp, env=env), "32 MiB", "ACBUILD_MAX_IMAGE_SIZE")
    assert leftovers(small_tmp) == []
    flag = acbuild("--max-image-size", "16M", "validate", aci, env=env_with(small_tmp))
    assert_clear_error(flag, "16 MiB")
    config = write(small_tmp / "config" / "acbuild" / "acbuild.toml", 'max-image-size = "8M"\n')
    toml = acbuild("validate", aci, env=env_with(small_tmp, XDG_CONFIG_HOME=str(config.parent.parent)))
    assert_clear_error(toml, "8 MiB")


def test_image_under_the_limit_is_read(tmp_path):
    aci = save(tmp_path, image(member("rootfs/a", bytes(100_000))))
    result = acbuild("--max-image-size", "1M", "validate", aci)
    assert result.returncode == 0, result.stdout + result.stderr
    bad = acbuild("--max-image-size", "lots", "validate", aci)
    assert_clear_error(bad, "not a size")

