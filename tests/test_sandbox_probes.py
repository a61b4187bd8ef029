"""A hostile image author's probes (issue 10), run the way a user runs images: through the
real `acbuild build` (a RUN step) and `acbuild launch` (the app), as root and as an
unprivileged user (rootless). Nothing mocked: a static C probe compiled here with gcc for
the syscalls that have no shell form, busybox for the rest, real devices, a real canary
directory on the host and a real HTTP server on 127.0.0.1.

Each probe prints "NAME: verdict" (tests/data/probes/probe.sh); a hole is an upper-case
verdict. The tests read those lines; the canary and the host are checked from outside too.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import pytest
from conftest import require
from rootlesstools import pythonpath  # noqa: F401 (a fixture: the world-readable acbuild and its deps)

REPO = Path(__file__).resolve().parent.parent
PROBES = REPO / "tests/data/probes"
BUSYBOX = Path("/bin/busybox")
APPLETS = ("sh", "cat", "grep", "sed", "awk", "df", "tail", "head", "wc", "ls", "id", "mount", "mknod",
           "rm", "wget", "echo", "printf", "true")
HOLES = re.compile(r": .*\b(ALLOWED|OPENED|INHERITED|WRITTEN|REACHED)\b")

# Docker's default capability set (moby oci/caps/defaults.go) less CAP_MKNOD, which issue 10
# drops so that no RUN step can make a device node.
DOCKER_DEFAULT = {"CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                  "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE"}
EXPECTED_CAPS = DOCKER_DEFAULT - {"MKNOD"}
CAP_NUMBERS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
               "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "NET_BIND_SERVICE": 10, "NET_RAW": 13,
               "SYS_CHROOT": 18, "SYS_ADMIN": 21, "MKNOD": 27, "AUDIT_WRITE": 29, "SETFCAP": 31}
TMPFS_LIMIT_KB = 512 * 1024  # the default --tmpfs-size

MODES = ["build-root", "build-rootless", "launch-root", "launch-rootless"]


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "the probes run as root and as an unprivileged user (CI is root)")
    require(BUSYBOX.exists(), "needs busybox-static")
    require(shutil.which("gcc") is not None, "needs gcc (build-essential) for the C probe")


def shared_dir(prefix: str) -> Path:
    top = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    top.chmod(0o755)
    return top


@pytest.fixture(scope="module")
def world(unprivileged_user, pythonpath):
    """Everything the probes need, made once: the probe, the canary, the server, images."""
    top = shared_dir("acbuild-probes-")
    server = http.server.HTTPServer(("127.0.0.1", 0), _Secret)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = top / "probe"
        subprocess.run(["gcc", "-static", "-O1", "-o", probe, PROBES / "probe.c"], check=True, capture_output=True)
        canary = top / "canary"
        canary.mkdir()
        token = "canary-" + secrets.token_hex(8)
        (canary / token).write_text("host secret\n")
        handle = subprocess.run([probe, "handle"], cwd=canary, check=True, capture_output=True, text=True).stdout
        w = World(top, probe, canary, token, handle.strip(), server.server_address[1], unprivileged_user,
                  pythonpath)
        w.before = canary_state(canary)
        yield w
    finally:
        server.shutdown()
        shutil.rmtree(top, ignore_errors=True)


class _Secret(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host-only-secret\n")

    def log_message(self, *_):
        pass


def canary_state(canary: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in canary.iterdir()}


class World:
    def __init__(self, top, probe, canary, token, handle, port, user, pythonpath):
        self.top, self.probe, self.canary, self.token, self.handle = top, probe, canary, token, handle
        self.port, self.user, self.pythonpath = port, user, pythonpath
        self.outputs: dict[str, str] = {}
        self.before: dict[str, bytes] = {}

    def image(self, name: str, *, user: str = "0", node: bool = True, args: tuple[str, ...] = (),
              exec_: tuple[str, ...] = ("/probe.sh",)) -> Path:
        """An .aci (written here with tarfile) of busybox, the probes, a setuid-root copy of
        the C probe (/suid-probe) and, when `node`, a 0666 /dev/zero twin at /shipped-zero;
        its app runs `exec_` + `args` (default: all the probes) as `user`."""
        path = self.top / f"{name}.aci"
        manifest = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": f"example.com/{name}",
                    "labels": [{"name": "os", "value": "linux"}, {"name": "arch", "value": "amd64"}],
                    "app": {"exec": [*exec_, *args], "user": user, "group": user}}
        with tarfile.open(path, "w") as tar:
            def add(name, data=None, **kw):
                info = tarfile.TarInfo(name)
                info.mtime, info.mode = 0, kw.pop("mode", 0o755)
                for k, v in kw.items():
                    setattr(info, k, v)
                if data is not None:
                    info.size = len(data)
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
            add("manifest", json.dumps(manifest).encode(), mode=0o644)
            add("rootfs", type=tarfile.DIRTYPE)
            add("rootfs/bin", type=tarfile.DIRTYPE)
            add("rootfs/bin/busybox", BUSYBOX.read_bytes())
            for applet in APPLETS:
                add(f"rootfs/bin/{applet}", type=tarfile.SYMTYPE, linkname="busybox", mode=0o777)
            add("rootfs/probe", self.probe.read_bytes())
            add("rootfs/probe.sh", (PROBES / "probe.sh").read_bytes())
            add("rootfs/suid-probe", self.probe.read_bytes(), mode=0o4755)
            if node:
                add("rootfs/shipped-zero", type=tarfile.CHRTYPE, devmajor=1, devminor=5, mode=0o666)
        path.chmod(0o644)
        return path

    def settings(self) -> str:
        """What the probes need to know, as probe.sh's KEY=VALUE arguments."""
        return f"CANARY_HANDLE={self.handle} HOST_PORT={self.port}"

    def run(self, mode: str) -> str:
        """The probes' output in `mode` (run once per mode, kept for the other tests)."""
        if mode in self.outputs:
            return self.outputs[mode]
        rootless = mode.endswith("rootless")
        work = self.top / mode
        work.mkdir()
        image = self.image(mode, node=not rootless)
        if mode.startswith("build"):
            (work / "ACIfile").write_text(f"FROM {image}\nNAME example.com/probed\nRUN /probe.sh {self.settings()}\n")
            argv = ["build", "-f", str(work / "ACIfile"), "-o", str(work / "out.aci"), "--no-cache"]
        else:
            argv = ["launch", "--insecure-skip-verify", str(image), "--", *self.settings().split()]
        tmpdir = work / "tmp"  # on the canary's filesystem, so a file handle could reach it
        tmpdir.mkdir()
        if rootless:
            for p in (work, tmpdir):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        # A host directory descriptor left open by whoever started acbuild: the step must not get it.
        leaked = os.open(self.canary, os.O_RDONLY | os.O_DIRECTORY)
        os.set_inheritable(leaked, True)
        try:
            env = dict(os.environ, TMPDIR=str(tmpdir))
            if rootless:
                cmd = ["runuser", "-u", self.user.pw_name, "--", "/usr/bin/env", f"PYTHONPATH={self.pythonpath}",
                       f"TMPDIR={tmpdir}", f"HOME={work}", f"XDG_CACHE_HOME={work}/cache",
                       "/usr/bin/python3", "-m", "acbuild", *argv]
            else:
                cmd = [sys.executable, "-m", "acbuild", *argv]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, pass_fds=(leaked,), timeout=120,
                                  cwd=work)
        finally:
            os.close(leaked)
        out = proc.stdout + proc.stderr
        print(f"--- {mode} ---\n{out}")
        assert "probes: done" in out, out
        self.outputs[mode] = out
        return out

    def line(self, mode: str, name: str) -> str:
        out = self.run(mode)
        found = [line for line in out.splitlines() if line.startswith(f"{name}:")]
        assert found, f"no {name} line in:\n{out}"
        return found[0]


def assert_refused(w: World, mode: str, *names: str) -> None:
    for name in names:
        line = w.line(mode, name)
        assert not HOLES.search(line), f"{mode}: {line}"


@pytest.mark.parametrize("mode", MODES)
def test_open_by_handle_at_reaches_no_host_file(world, mode):
    assert world.line(mode, "open_by_handle_at").startswith("open_by_handle_at: refused")
    assert world.token not in world.run(mode)


@pytest.mark.parametrize("mode", MODES)
def test_proc_sys_is_read_only(world, mode):
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    assert_refused(world, mode, "core_pattern", "sysrq")
    assert Path("/proc/sys/kernel/core_pattern").read_text() == before


@pytest.mark.parametrize("mode", MODES)
def test_sysfs_cannot_be_remounted_or_written(world, mode):
    assert_refused(world, mode, "sysfs-remount", "sysfs-write")


@pytest.mark.parametrize("mode", MODES)
def test_mknod_of_a_char_device_is_refused(world, mode):
    assert_refused(world, mode, "mknod")


@pytest.mark.parametrize("mode", ["build-root", "launch-root"])
def test_a_device_node_shipped_in_the_image_is_unusable(world, mode):
    assert "refused" in world.line(mode, "shipped-node")


def test_a_device_node_shipped_in_the_image_is_unusable_by_uid_1000_under_launch(world):
    image = world.image("node-1000", user="1000", args=("node",))
    proc = subprocess.run([sys.executable, "-m", "acbuild", "launch", "--insecure-skip-verify", str(image)],
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, TMPDIR=str(world.top)))
    print(proc.stdout, proc.stderr)
    assert "shipped-node: refused as 1000" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("mode", MODES)
def test_no_host_descriptor_is_inherited(world, mode):
    assert_refused(world, mode, "fds")
    assert f"INHERITED {world.canary}" not in world.run(mode)


@pytest.mark.parametrize("mode", MODES)
def test_mountinfo_names_no_host_path(world, mode):
    lines = [line for line in world.run(mode).splitlines() if line.startswith("mountinfo ")]
    assert lines
    for line in lines:
        assert str(world.top) not in line and "/tmp/" not in line, line


@pytest.mark.parametrize("mode", MODES)
def test_tmpfs_mounts_are_sized(world, mode):
    sizes = {line.split()[1]: int(line.split()[2]) for line in world.run(mode).splitlines()
             if line.startswith("tmpfs ")}
    assert set(sizes) == {"/tmp", "/run", "/dev/shm", "/dev"}
    assert all(kb <= TMPFS_LIMIT_KB for kb in sizes.values()), sizes


@pytest.mark.parametrize("mode", MODES)
def test_syscalls_docker_forbids_are_refused(world, mode):
    assert_refused(world, mode, "keyctl", "add_key", "bpf", "kexec_load", "unshare-user", "unshare-mount",
                   "clone-newuser", "mount-tmpfs", "umount-proc-mask", "perf_event_open", "reboot")


@pytest.mark.parametrize("mode", MODES)
def test_a_syscall_outside_dockers_allow_list_fails_with_eperm(world, mode):
    """Docker's profile is an allow-list with EPERM as its default: a syscall it does not
    list (an unknown number, pidfd_getfd without CAP_SYS_PTRACE) or an argument it does
    not allow (personality(ADDR_NO_RANDOMIZE), socket(AF_VSOCK)) fails with EPERM, while
    what it lists works."""
    for name in ("unlisted-syscall", "pidfd_getfd", "personality-no-randomize", "socket-vsock"):
        assert world.line(mode, name) == f"{name}: refused (Operation not permitted)"
    for name in ("personality-query", "socket-unix", "fork"):
        assert world.line(mode, name) == f"{name}: works"


@pytest.mark.parametrize("mode", MODES)
def test_kernel_paths_are_masked(world, mode):
    masked = {line.split()[1]: int(line.split()[2]) for line in world.run(mode).splitlines()
              if line.startswith("masked ")}
    assert "/proc/keys" in masked and "/sys/firmware" in masked
    assert all(n == 0 for n in masked.values()), masked


def runc_default_capabilities(top: Path) -> list[str]:
    """What Debian's runc puts in a default spec (`runc spec`), for comparison."""
    spec = top / "runc-spec"
    spec.mkdir(exist_ok=True)
    if not (spec / "config.json").exists():
        subprocess.run(["runc", "spec"], cwd=spec, check=True, capture_output=True)
    return json.loads((spec / "config.json").read_text())["process"]["capabilities"]["bounding"]


def cap_names(mask: int) -> set[str]:
    names = {n: k for k, n in CAP_NUMBERS.items()}
    return {names.get(bit, f"cap{bit}") for bit in range(64) if mask >> bit & 1}


@pytest.mark.parametrize("mode", MODES)
def test_capabilities_are_dockers_default_set(world, mode):
    require(shutil.which("runc") is not None, "needs runc (for its default spec)")
    caps = {line.split()[1].rstrip(":"): int(line.split()[2], 16) for line in world.run(mode).splitlines()
            if line.startswith("caps Cap")}
    runc = runc_default_capabilities(world.top)
    print(f"{mode}: CapEff={caps['CapEff']:016x} CapBnd={caps['CapBnd']:016x} = {sorted(cap_names(caps['CapBnd']))}")
    print(f"runc spec default bounding set: {runc}")
    print(f"Docker default less MKNOD:      {sorted(EXPECTED_CAPS)}")
    expected = sum(1 << CAP_NUMBERS[n] for n in EXPECTED_CAPS)
    assert caps["CapBnd"] == expected, sorted(cap_names(caps["CapBnd"]))
    assert caps["CapEff"] == expected  # the probe runs as root in the image
    assert caps["CapInh"] == 0 and caps["CapAmb"] == 0


@pytest.mark.parametrize("mode", MODES)
def test_network_none_cannot_reach_a_host_server(world, mode):
    assert_refused(world, mode, "network")
    assert "host-only-secret" not in world.run(mode)


def test_the_canary_directory_was_neither_read_nor_changed(world):
    for mode in MODES:
        world.run(mode)
        assert world.token not in world.outputs[mode], mode
    assert canary_state(world.canary) == world.before


def test_setuid_binaries_in_a_work_path_are_out_of_other_users_reach(world, tmp_path):
    """`begin` puts the image's rootfs (setuid-root binaries and all) in DIR/.acbuild: another
    host user must not be able to reach it, so cannot run them."""
    project = shared_dir("acbuild-workpath-")
    try:
        image = project / "suid.aci"
        with tarfile.open(image, "w") as tar:
            for name, kind, mode, data in (("manifest", tarfile.REGTYPE, 0o644, json.dumps(
                    {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": "example.com/suid",
                     "labels": []}).encode()), ("rootfs", tarfile.DIRTYPE, 0o755, None),
                    ("rootfs/suid-probe", tarfile.REGTYPE, 0o4755, world.probe.read_bytes())):
                info = tarfile.TarInfo(name)
                info.type, info.mode = kind, mode
                info.size = len(data) if data else 0
                tar.addfile(info, io.BytesIO(data) if data else None)
        image.chmod(0o644)
        subprocess.run([sys.executable, "-m", "acbuild", "begin", "--work-path", str(project), "--insecure-skip-verify",
                        str(image)], check=True, capture_output=True, text=True)
        found = [p for p in (project / ".acbuild").rglob("suid-probe")]
        assert found and found[0].stat().st_mode & 0o4000  # it is there, setuid root
        proc = subprocess.run(["runuser", "-u", world.user.pw_name, "--", str(found[0]), "euid"],
                              capture_output=True, text=True)
        assert proc.returncode != 0 and "euid 0" not in proc.stdout, proc.stdout
        assert (project / ".acbuild").stat().st_mode & 0o077 == 0
    finally:
        shutil.rmtree(project, ignore_errors=True)


def launch(image: Path, *flags: str, top: Path) -> str:
    proc = subprocess.run([sys.executable, "-m", "acbuild", "launch", "--insecure-skip-verify", *flags, str(image)],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, TMPDIR=str(top)))
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stdout


def test_tmpfs_size_flag_sets_the_limit(world):
    out = launch(world.image("small-tmp", args=("tmpfs",)), "--tmpfs-size", "8M", top=world.top)
    assert {"tmpfs /tmp 8192", "tmpfs /run 8192", "tmpfs /dev/shm 8192"} <= set(out.splitlines()), out


def test_setuid_works_in_builds_and_only_with_allow_setuid_under_launch(world):
    """The no_new_privs/nosuid rule: a RUN step as a non-root user may use setuid (sudo, su);
    a launched app may not, unless --allow-setuid says the image needs it."""
    image = world.image("setuid", user="1000", exec_=("/suid-probe", "euid"))
    assert launch(image, top=world.top).split() == ["euid", "1000"]
    assert launch(image, "--allow-setuid", top=world.top).split() == ["euid", "0"]
    ctx = world.top / "setuid-build"
    ctx.mkdir()
    (ctx / "ACIfile").write_text(f"FROM {image}\nNAME example.com/setuid\nUSER 1000\nRUN /suid-probe euid\n")
    proc = subprocess.run([sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o",
                           str(ctx / "out.aci"), "--no-cache"], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, TMPDIR=str(world.top)))
    assert proc.returncode == 0, proc.stderr
    assert "euid 0" in proc.stdout, proc.stdout + proc.stderr


def test_the_step_cache_and_work_dirs_are_private(world):
    cache = world.top / "private-cache"
    ctx = world.top / "private-build"
    ctx.mkdir()
    (ctx / "ACIfile").write_text(f"FROM {world.image('private')}\nNAME example.com/private\n"
                                 "RUN true\n")
    subprocess.run([sys.executable, "-m", "acbuild", "build", "-f", str(ctx / "ACIfile"), "-o", str(ctx / "o.aci"),
                    "--cache-dir", str(cache)], check=True, capture_output=True, timeout=60,
                   env=dict(os.environ, TMPDIR=str(world.top)))
    assert cache.stat().st_mode & 0o777 == 0o700
