"""Rootless builds without loss (acbuild.userns, acbuild.placeholders): run as a real
unprivileged user with a subordinate id range, through Debian's newuidmap/newgidmap
and real user namespaces, a build gives the very bytes the same build gives as root:
every owner, the setgid dir, device nodes, the fifo, hard links. Without a range, a
base with other owners is a clear error unless --squash-owners. Nothing mocked."""

from __future__ import annotations

import grp
import io
import os
import pwd
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import require
from rootlesstools import BUSYBOX, PYTHON, acbuild, acbuild_proc, owned_tree, pythonpath, shared_dir  # noqa: F401

DEVICES = {"rootfs/dev/null": (tarfile.CHRTYPE, 1, 3), "rootfs/dev/loop0": (tarfile.BLKTYPE, 7, 0)}


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "sets up unprivileged users (CI is root)")
    require(BUSYBOX.exists() and PYTHON.exists(), "needs busybox-static and Debian's python3")
    require(all(shutil.which(t) for t in ("newuidmap", "newgidmap")), "needs newuidmap/newgidmap (uidmap)")


@pytest.fixture
def top():
    d = shared_dir("acbuild-ids-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def listing(aci: Path) -> list[tuple]:
    """What the tests compare: every entry's name, type, mode, owner, device numbers, link."""
    with tarfile.open(aci) as t:
        return [(i.name, i.type, i.mode, i.uid, i.gid, i.devmajor, i.devminor, i.linkname) for i in t.getmembers()]


def error_lines(stderr: str) -> list[str]:
    """The messages, without the caret excerpt under a FILE:LINE:COL one."""
    return [line for line in stderr.splitlines() if line and not line.startswith(" ")]


def synthetic_base(out: Path) -> Path:
    """An .aci with what a real rootfs has: owners 1000 and 0:42, a setgid dir, setuid and
    setgid files, a sticky dir, a char and a block device, a fifo, a hard link, a symlink
    owned by 1000, and busybox."""
    def add(t: tarfile.TarFile, name: str, kind=tarfile.DIRTYPE, mode=0o755, uid=0, gid=0, data=b"", **kw):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.uid, info.gid, info.size = kind, mode, uid, gid, len(data)
        for k, v in kw.items():
            setattr(info, k, v)
        t.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

    manifest = (b'{"acKind":"ImageManifest","acVersion":"0.8.11","name":"example.com/synthetic",'
                b'"labels":[{"name":"os","value":"linux"},{"name":"arch","value":"amd64"}]}')
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        add(t, "manifest", tarfile.REGTYPE, 0o644, data=manifest)
        for d in ("rootfs", "rootfs/bin", "rootfs/dev", "rootfs/etc", "rootfs/home", "rootfs/run", "rootfs/data"):
            add(t, d)
        add(t, "rootfs/bin/busybox", tarfile.REGTYPE, 0o755, data=BUSYBOX.read_bytes())
        add(t, "rootfs/bin/sh", tarfile.SYMTYPE, 0o777, linkname="busybox")
        add(t, "rootfs/etc/passwd", tarfile.REGTYPE, 0o644, data=b"root:x:0:0::/root:/bin/sh\n")
        add(t, "rootfs/etc/group", tarfile.REGTYPE, 0o644, data=b"root:x:0:\nshadow:x:42:\nstaff:x:50:\n")
        add(t, "rootfs/etc/shadow", tarfile.REGTYPE, 0o640, gid=42, data=b"root:*:19000:0:99999:7:::\n")
        for name, (kind, major, minor) in DEVICES.items():
            add(t, name, kind, 0o666 if major == 1 else 0o660, gid=0 if major == 1 else 6, devmajor=major, devminor=minor)
        add(t, "rootfs/run/initctl", tarfile.FIFOTYPE, 0o600)
        add(t, "rootfs/data/staff", mode=0o2775, gid=50)
        add(t, "rootfs/data/mine", tarfile.REGTYPE, 0o600, uid=1000, gid=1000, data=b"mine\n")
        add(t, "rootfs/data/mine-too", tarfile.LNKTYPE, linkname="rootfs/data/mine")
        add(t, "rootfs/data/link", tarfile.SYMTYPE, 0o777, uid=1000, gid=1000, linkname="mine")
        add(t, "rootfs/data/file", tarfile.REGTYPE, 0o644, data=b"chown me\n")
        add(t, "rootfs/data/setuid", tarfile.REGTYPE, 0o4755, data=b"#!/bin/sh\n")
        add(t, "rootfs/data/setgid", tarfile.REGTYPE, 0o2755, gid=50, data=b"#!/bin/sh\n")
        add(t, "rootfs/tmp", mode=0o1777)
    out.chmod(0o644)
    return out


SYNTHETIC_ACIFILE = """FROM base.aci
NAME example.com/ids
RUN ["/bin/busybox", "chown", "1234:5678", "/data/file"]
RUN ["/bin/busybox", "sh", "-c", "echo app:x:2000:2000::/home/app:/bin/sh >> /etc/passwd && echo app:x:2000: >> /etc/group && /bin/busybox mkdir -p /home/app && echo hi > /home/app/.profile && /bin/busybox chown -R 2000:2000 /home/app"]
EXEC ["/bin/busybox", "id"]
"""


def build_both(top: Path, user: pwd.struct_passwd, pythonpath: str, acifile: str, base: Path,
               extra: tuple[str, ...] = (), timeout: int = 300) -> dict[str, Path]:
    """The same build as root and as `user`, each in its own dir and cache: {who: .aci}."""
    out = {}
    for who in ("root", "rootless"):
        d = owned_tree(top / who, user)
        shutil.copy2(base, d / "base.aci")
        (d / "ACIfile").write_text(acifile)
        for p in [d, *d.iterdir()]:
            os.lchown(p, user.pw_uid, user.pw_gid)
        acbuild(["build", "-q", "--cache-dir", str(d / "cache"), *extra, "-f", str(d / "ACIfile"),
                 "-o", str(d / "out.aci")], pythonpath, user if who == "rootless" else None, timeout=timeout)
        out[who] = d / "out.aci"
    return out


def test_synthetic_base_round_trip_is_identical_root_and_rootless(unprivileged_user, pythonpath, top, actool):
    base = synthetic_base(top / "base.aci")
    images = build_both(top, unprivileged_user, pythonpath, SYNTHETIC_ACIFILE, base)
    rootless, root = listing(images["rootless"]), listing(images["root"])
    assert rootless == root
    entries = {e[0]: e for e in root}
    for name, (kind, major, minor) in DEVICES.items():
        assert entries[name][1] == kind and entries[name][5:7] == (major, minor)
    assert entries["rootfs/etc/shadow"][3:5] == (0, 42)
    assert entries["rootfs/data/staff"][2] == 0o2775 and entries["rootfs/data/staff"][3:5] == (0, 50)
    assert entries["rootfs/data/mine"][3:5] == (1000, 1000)
    assert entries["rootfs/data/mine-too"][1] == tarfile.LNKTYPE
    assert entries["rootfs/data/link"][3:5] == (1000, 1000)
    assert entries["rootfs/data/file"][3:5] == (1234, 5678)
    assert entries["rootfs/run/initctl"][1] == tarfile.FIFOTYPE
    assert entries["rootfs/data/setuid"][2] == 0o4755 and entries["rootfs/data/setgid"][2:5] == (0o2755, 0, 50)
    assert entries["rootfs/tmp"][2] == 0o1777
    assert entries["rootfs/home/app"][3:5] == (2000, 2000)
    assert entries["rootfs/home/app/.profile"][3:5] == (2000, 2000)
    assert images["rootless"].read_bytes() == images["root"].read_bytes()
    # again, one step more: the steps before come from the step cache, whose records hold
    # the placeholders as devices, and are restored as placeholders again
    d = images["rootless"].parent
    (d / "ACIfile.more").write_text(SYNTHETIC_ACIFILE + "LABEL again=1\n")
    again = acbuild_proc(["build", "--cache-dir", str(d / "cache"), "-f", str(d / "ACIfile.more"),
                          "-o", str(d / "again.aci")], pythonpath, unprivileged_user)
    assert again.returncode == 0, again.stderr
    assert again.stderr.count("(cached)") >= 3, again.stderr
    assert [e for e in listing(d / "again.aci") if e[0] != "manifest"] == [e for e in root if e[0] != "manifest"]
    proc = acbuild_proc(["validate", str(images["rootless"])], pythonpath, unprivileged_user)
    assert proc.returncode == 0, proc.stderr


def test_without_subordinate_ids_other_owners_fail_unless_squashed(single_id_user, pythonpath, top):
    user = single_id_user
    d = owned_tree(top / "single", user)
    synthetic_base(d / "base.aci")
    (d / "ACIfile").write_text("FROM base.aci\nNAME example.com/squashed\n")
    for p in [d, *d.iterdir()]:
        os.lchown(p, user.pw_uid, user.pw_gid)
    args = ["build", "-q", "--cache-dir", str(d / "cache"), "-f", str(d / "ACIfile"), "-o", str(d / "out.aci")]
    failed = acbuild_proc(args, pythonpath, user)
    assert failed.returncode == 1, failed.stderr
    assert "/etc/subuid" in failed.stderr and "--squash-owners" in failed.stderr, failed.stderr
    assert "Traceback" not in failed.stderr and len(error_lines(failed.stderr)) == 1, failed.stderr
    assert error_lines(failed.stderr)[0].startswith(f"{d / 'ACIfile'}:1:1: FROM base.aci: ")
    assert not (d / "out.aci").exists()
    squashed = acbuild_proc([*args, "--squash-owners"], pythonpath, user)
    assert squashed.returncode == 0, squashed.stderr
    assert "--squash-owners" in squashed.stderr  # said once, up front
    entries = listing(d / "out.aci")
    assert {(e[3], e[4]) for e in entries} == {(0, 0)}
    names = {e[0]: e for e in entries}
    assert names["rootfs/dev/null"][1] == tarfile.CHRTYPE  # device nodes survive even so


def test_from_an_unreadable_root_owned_directory_is_one_clear_error(unprivileged_user, pythonpath, top):
    tree = top / "tree"
    (tree / "etc/secret").mkdir(parents=True)
    (tree / "etc/secret/key").write_text("x")
    (tree / "etc/secret").chmod(0o700)  # root's: the user cannot list it
    d = owned_tree(top / "ctx", unprivileged_user)
    (d / "ACIfile").write_text(f"FROM {tree}\nNAME example.com/unreadable\n")
    proc = acbuild_proc(["build", "-q", "--cache-dir", str(d / "cache"), "-f", str(d / "ACIfile"),
                         "-o", str(d / "out.aci")], pythonpath, unprivileged_user)
    assert proc.returncode != 0
    lines = error_lines(proc.stderr)
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{tree}/etc/secret" in lines[0] and "Permission denied" in lines[0], lines[0]


def test_launch_rootless_runs_the_app_as_the_manifest_user(unprivileged_user, pythonpath, top):
    base = synthetic_base(top / "base.aci")
    acifile = SYNTHETIC_ACIFILE.replace('EXEC ["/bin/busybox", "id"]', 'USER app\nGROUP app\nEXEC ["/bin/busybox", "id"]')
    images = build_both(top, unprivileged_user, pythonpath, acifile, base)
    out = acbuild(["launch", "--insecure-skip-verify", str(images["rootless"])], pythonpath, unprivileged_user)
    assert out.startswith("uid=2000(app) gid=2000(app)"), out


# --- a real Debian base ------------------------------------------------------------------

# apt and dpkg log with the wall clock, and apt-get update fetches lists that can change
# between two builds: what two runs of the same RUN write differently, whoever runs it.
DEBIAN_ACIFILE = """FROM base.aci
NAME example.com/debian-curl
RUN useradd -m app
RUN --network=host apt-get update -qq && apt-get install -y -qq --no-install-recommends curl \\
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log \\
              /var/cache/ldconfig/aux-cache /var/cache/debconf/*-old /var/lib/dpkg/*-old
EXEC ["/usr/bin/curl", "--version"]
"""


def test_debian_useradd_and_apt_get_give_the_root_image_rootless(unprivileged_user, pythonpath, top, debian_aci):
    images = build_both(top, unprivileged_user, pythonpath, DEBIAN_ACIFILE, debian_aci, timeout=900)
    rootless, root = listing(images["rootless"]), listing(images["root"])
    assert [e for e in rootless if e not in root] == [] and [e for e in root if e not in rootless] == []
    entries = {e[0]: e for e in root}
    assert sum(e[1] in (tarfile.CHRTYPE, tarfile.BLKTYPE) for e in root) >= 8  # mmdebstrap's /dev
    assert entries["rootfs/home/app"][3] == entries["rootfs/home/app"][4] == 1000
    assert entries["rootfs/etc/shadow"][4] == 42
    assert entries["rootfs/usr/bin/curl"][1] == tarfile.REGTYPE
    assert images["rootless"].read_bytes() == images["root"].read_bytes()


def test_interactive_verbs_rootless_give_the_root_image(unprivileged_user, pythonpath, top):
    """begin / run / write, one command at a time, each entering the namespace again."""
    user = unprivileged_user
    base = synthetic_base(top / "base.aci")
    images = {}
    for who in ("root", "rootless"):
        d = owned_tree(top / who, user)
        shutil.copy2(base, d / "base.aci")
        os.lchown(d / "base.aci", user.pw_uid, user.pw_gid)
        runner = user if who == "rootless" else None
        work = ["--work-path", str(d)]
        acbuild([*work, "begin", str(d / "base.aci")], pythonpath, runner)
        acbuild([*work, "run", "--", "/bin/busybox", "chown", "1234:5678", "/data/file"], pythonpath, runner)
        acbuild([*work, "set-name", "example.com/interactive"], pythonpath, runner)
        acbuild([*work, "write", str(d / "out.aci")], pythonpath, runner)
        acbuild([*work, "end"], pythonpath, runner)
        assert not (d / ".acbuild").exists()
        images[who] = d / "out.aci"
    assert listing(images["rootless"]) == listing(images["root"])
    assert images["rootless"].read_bytes() == images["root"].read_bytes()


def test_unshare_shows_the_mapping_and_can_remove_what_builds_left(unprivileged_user, pythonpath, top):
    user = unprivileged_user
    d = owned_tree(top / "u", user)
    shown = acbuild(["unshare", "--", "cat", "/proc/self/uid_map"], pythonpath, user).split()
    assert shown[:3] == ["0", str(user.pw_uid), "1"] and shown[3] == "1" and int(shown[5]) >= 65535
    acbuild(["unshare", "--", "sh", "-c", f"mkdir {d}/x && touch {d}/x/f && chown -R 1000:1000 {d}/x"], pythonpath, user)
    host = (d / "x/f").stat()
    assert host.st_uid == int(shown[4]) + 999  # container 1000 is the range's 1000th id on the host
    gone = acbuild_proc(["unshare", "--", "rm", "-rf", f"{d}/x"], pythonpath, user)
    assert gone.returncode == 0 and not (d / "x").exists(), gone.stderr


def test_copy_from_a_stage_leaves_device_placeholders_out_as_root_leaves_devices(unprivileged_user, pythonpath, top):
    acifile = "FROM base.aci AS a\nFROM base.aci\nNAME example.com/copied\nCOPY --from=a /dev /devcopy\n"
    images = build_both(top, unprivileged_user, pythonpath, acifile, synthetic_base(top / "base.aci"))
    assert listing(images["rootless"]) == listing(images["root"])
    assert not any(e[0].startswith("rootfs/devcopy/") for e in listing(images["root"]))


def test_where_newuidmap_cannot_map_acbuild_says_why_and_builds_with_one_id(unprivileged_user, pythonpath, top):
    """In a user namespace of its own (as in a rootless container) the user keeps its
    range in /etc/subuid, but newuidmap cannot write maps from there."""
    user = unprivileged_user
    d = owned_tree(top / "nested", user)
    (d / "ACIfile").write_text('FROM scratch\nNAME example.com/nested\nLABEL a=b\n')
    os.lchown(d / "ACIfile", user.pw_uid, user.pw_gid)
    env = ["env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", f"PYTHONPATH={pythonpath}", f"HOME={user.pw_dir}"]
    proc = subprocess.run(["runuser", "-u", user.pw_name, "--", "unshare", "--user", "--map-current-user", *env,
                           str(PYTHON), "-m", "acbuild", "build", "-q", "--cache-dir", str(d / "cache"),
                           "-f", str(d / "ACIfile"), "-o", str(d / "out.aci")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "cannot use the subordinate ids" in proc.stderr and "ACBUILD_USERNS=single" in proc.stderr, proc.stderr
    assert proc.stdout.startswith("sha512-")


def test_the_users_supplementary_groups_still_open_its_files(unprivileged_user, pythonpath, top):
    user = unprivileged_user
    group = "acbuild-test-grp"
    subprocess.run(["groupadd", "-f", group], check=True)
    subprocess.run(["usermod", "-a", "-G", group, user.pw_name], check=True)
    try:
        ctx = top / "grp"
        ctx.mkdir()
        (ctx / "ACIfile").write_text("FROM scratch\nNAME example.com/grp\nCOPY f /f\n")
        (ctx / "f").write_text("x")
        gid = grp.getgrnam(group).gr_gid
        for p in (ctx, ctx / "ACIfile", ctx / "f"):
            os.chown(p, 0, gid)
        ctx.chmod(0o750)
        out = owned_tree(top / "grp-out", user)
        acbuild(["build", "-q", "--cache-dir", str(out / "cache"), "-f", str(ctx / "ACIfile"),
                 "-o", str(out / "out.aci")], pythonpath, user)
    finally:
        subprocess.run(["gpasswd", "-d", user.pw_name, group], capture_output=True)
        subprocess.run(["groupdel", group], capture_output=True)
