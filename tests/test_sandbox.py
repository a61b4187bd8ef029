"""The RUN sandbox, with real namespaces: nothing mocked. Every assertion about isolation
is made by a command running inside the sandbox, on a busybox rootfs built here.

The test process itself never mounts or pivots: run_sandboxed does that in forked
children with their own mount namespace."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import require

from acbuild.engine.execute import hardening
from acbuild.engine.execute.sandbox import DEFAULT_PATH, Bind, SandboxSpec, run_sandboxed
from acbuild.engine.execute.users import in_image
from acbuild.errors import BuildError

REPO = Path(__file__).resolve().parent.parent
BUSYBOX = Path("/bin/busybox")


@pytest.fixture(scope="module", autouse=True)
def prerequisites() -> None:
    require(os.geteuid() == 0, "the sandbox tests set up as root (CI is root)")
    require(BUSYBOX.exists(), "needs busybox-static (make system-deps)")


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def host_mountinfo() -> str:
    return Path("/proc/self/mountinfo").read_text()


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    """A busybox rootfs, its applet links made by busybox itself inside the sandbox."""
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    assert run_sandboxed(SandboxSpec(root, ("/bin/busybox", "--install", "-s", "/bin"), ())) == 0
    assert (root / "bin/sh").is_symlink()
    return root


def sh(root: Path, script: str, tmp_path: Path, **kw) -> tuple[int, str]:
    """Run a shell script in the sandbox; return (status, stdout)."""
    with open(tmp_path / "out", "w+b") as out:
        code = run_sandboxed(SandboxSpec(root, ("/bin/sh", "-c", script), kw.pop("env", ()), **kw), stdout=out)
        out.seek(0)
        return code, out.read().decode()


def test_pid1_is_our_init_in_a_fresh_pid_namespace(rootfs, tmp_path):
    code, out = sh(rootfs, "cat /proc/1/comm; echo $$; ls /proc | grep -E '^[0-9]+$'", tmp_path)
    lines = out.split()
    assert code == 0
    assert lines[0] == "acbuild-init"
    assert lines[1] == "2"  # the command is the first child of our init
    # Only the sandbox's processes: init, sh, and the pipeline's ls and grep.
    assert {int(p) for p in lines[2:]} <= {1, 2, 3, 4, 5, 6}


def test_hostname_is_fixed(rootfs, tmp_path):
    assert sh(rootfs, "hostname", tmp_path) == (0, "acbuild\n")
    assert sh(rootfs, "hostname", tmp_path, hostname="other") == (0, "other\n")


def test_network_none_has_only_lo_and_it_is_up(rootfs, tmp_path):
    code, out = sh(rootfs, "ls /sys/class/net; cat /sys/class/net/lo/flags; tail -n +3 /proc/net/dev", tmp_path)
    lines = out.splitlines()
    assert code == 0
    assert lines[0] == "lo"
    assert int(lines[1], 16) & 0x1  # IFF_UP
    assert [line.split(":")[0].strip() for line in lines[2:]] == ["lo"]


def test_host_mounts_are_invisible(rootfs, tmp_path):
    code, out = sh(rootfs, "cat /proc/self/mountinfo", tmp_path)
    assert code == 0
    points = {line.split()[4] for line in out.splitlines()}
    dev = {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm")}
    kernel = set(hardening.MASKED_PATHS) | set(hardening.READ_ONLY_PATHS)  # masked, made read-only
    assert points - kernel == {"/", "/proc", "/dev", "/sys", "/tmp", "/run"} | dev
    assert {"/proc/keys", "/proc/sys", "/sys/firmware"} <= points  # (no /proc/kcore on every kernel)
    # The host's files are out of reach, by path and through /proc.
    assert sh(rootfs, f"test -e {REPO}/pyproject.toml || test -e /proc/1/root{REPO}", tmp_path)[0] == 1


def test_write_outside_the_root_lands_inside(rootfs, tmp_path):
    code, _ = sh(rootfs, "mkdir /etc && echo x > /../../etc/acbuild-escape && echo y > /proc/../../../etc/b", tmp_path)
    assert code == 0
    assert (rootfs / "etc/acbuild-escape").read_text() == "x\n"
    assert (rootfs / "etc/b").read_text() == "y\n"
    assert not Path("/etc/acbuild-escape").exists()


def test_run_mount_points_and_tmpfs_content_do_not_stay(rootfs, tmp_path):
    before = listing(rootfs)
    code, _ = sh(rootfs, "echo a > /tmp/f; echo b > /run/f; echo c > /dev/shm/f; touch /made", tmp_path)
    assert code == 0
    assert listing(rootfs) == sorted(before + ["made"])  # no /proc /dev /sys /tmp /run left
    (rootfs / "tmp").mkdir()  # an image that has /tmp keeps it, but not what RUN put there
    assert sh(rootfs, "echo a > /tmp/f", tmp_path)[0] == 0
    assert list((rootfs / "tmp").iterdir()) == []
    assert sh(rootfs, "test -e /tmp/f", tmp_path)[0] == 1
    assert str(rootfs) not in host_mountinfo()


def test_exit_status_propagates(rootfs, tmp_path):
    assert sh(rootfs, "exit 7", tmp_path)[0] == 7
    assert sh(rootfs, "kill -TERM $$", tmp_path)[0] == 128 + signal.SIGTERM


def test_background_processes_die_with_the_command(rootfs, tmp_path):
    assert sh(rootfs, f"sleep {SLEEP} & (setsid sleep {SLEEP} &) ; exit 0", tmp_path)[0] == 0
    assert sleepers() == []  # PID 1 left, so the kernel killed the rest of the namespace


def test_env_cwd_and_user_are_applied(rootfs, tmp_path):
    (rootfs / "etc").mkdir()
    (rootfs / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (rootfs / "etc/group").write_text("root:x:0:\napp:x:1000:\nextra:x:1500:app\n")
    (rootfs / "home/app").mkdir(parents=True)
    os.chown(rootfs / "home/app", 1000, 1000)
    script = "id -u; id -g; id -G; pwd; echo $FOO; echo $PATH; touch mine"
    code, out = sh(rootfs, script, tmp_path, env=(("FOO", "bar"),), cwd="/home/app",
                   user="app", group="app", supplementary_gids=(1500,))
    assert code == 0
    assert out.splitlines() == ["1000", "1000", "1000 1500", "/home/app", "bar", DEFAULT_PATH]
    assert (rootfs / "home/app/mine").stat().st_uid == 1000
    # An explicit PATH wins over the default.
    assert sh(rootfs, "echo $PATH", tmp_path, env=(("PATH", "/bin"),)) == (0, "/bin\n")


def test_setup_and_exec_failures_raise_with_the_reason(rootfs, tmp_path):
    before = listing(rootfs)
    with pytest.raises(BuildError, match=r"^RUN: exec /bin/nope: No such file or directory$"):
        run_sandboxed(SandboxSpec(rootfs, ("/bin/nope",), ()))
    with pytest.raises(BuildError, match=r"^RUN: chdir /nowhere: No such file or directory$"):
        run_sandboxed(SandboxSpec(rootfs, ("true",), (), cwd="/nowhere"))
    with pytest.raises(BuildError, match="user 'bob' is not in the image's /etc/passwd"):
        run_sandboxed(SandboxSpec(rootfs, ("true",), (), user="bob"))
    with pytest.raises(BuildError, match="bad mount target '/proc/x'"):
        run_sandboxed(SandboxSpec(rootfs, ("true",), (), binds=(Bind(tmp_path, "/proc/x"),)))
    assert listing(rootfs) == before  # and nothing was left behind by the failures


def test_network_host_resolv_conf_is_not_left(rootfs, tmp_path):
    host_resolv = Path("/etc/resolv.conf").read_text() if Path("/etc/resolv.conf").exists() else ""
    before = listing(rootfs)
    code, out = sh(rootfs, "cat /etc/resolv.conf", tmp_path, network="host")
    assert (code, out) == (0, host_resolv)
    assert listing(rootfs) == before  # no /etc, no placeholder files
    # An image's own resolv.conf survives untouched; the command sees the host's.
    (rootfs / "etc").mkdir()
    (rootfs / "etc/resolv.conf").write_text("nameserver 192.0.2.1\n")
    assert sh(rootfs, "cat /etc/resolv.conf", tmp_path, network="host") == (0, host_resolv)
    assert (rootfs / "etc/resolv.conf").read_text() == "nameserver 192.0.2.1\n"


def test_resolv_conf_symlink_into_run_stays_inside(rootfs, tmp_path):
    (rootfs / "etc").mkdir()
    (rootfs / "etc/resolv.conf").symlink_to("/run/systemd/resolve/stub-resolv.conf")
    assert in_image(rootfs, "/etc/resolv.conf") == "/run/systemd/resolve/stub-resolv.conf"
    before = listing(rootfs)
    code, out = sh(rootfs, "cat /etc/resolv.conf", tmp_path, network="host")
    assert code == 0 and out == Path("/etc/resolv.conf").read_text()
    assert listing(rootfs) == before  # the target was made in the /run tmpfs only


def test_resolve_in_root_never_leaves_the_root(tmp_path):
    (tmp_path / "a").symlink_to("../../../../etc")
    (tmp_path / "b").symlink_to("/a/passwd")
    assert in_image(tmp_path, "/a/passwd") == "/etc/passwd"
    assert in_image(tmp_path, "/b") == "/etc/passwd"
    assert in_image(tmp_path, "/../../x/./y") == "/x/y"


def test_bind_mounts_visible_during_the_run_and_gone_after(rootfs, tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    cache.mkdir()
    (src / "f").write_text("hello\n")
    before = listing(rootfs)
    binds = (Bind(src, "/ctx/src"), Bind(cache, "/var/cache/pkg", read_only=False), Bind(src, "/tmp/in-tmp"))
    code, out = sh(rootfs, "cat /ctx/src/f /tmp/in-tmp/f; echo w > /var/cache/pkg/c; echo x > /ctx/src/g",
                   tmp_path, binds=binds)
    assert code == 1  # the read-only bind refused the last write
    assert out == "hello\nhello\n"
    assert (cache / "c").read_text() == "w\n" and not (src / "g").exists()
    assert listing(rootfs) == before  # /ctx, /var and their children were placeholders
    assert str(src) not in host_mountinfo()


def test_missing_mount_points_come_from_the_overlays_lower_dir_not_the_rootfs(rootfs, tmp_path):
    """A build's RUN steps share a scratch dir: /proc, /dev... missing from the image are
    made once in the overlay's empty lower dir, so a RUN neither creates nor removes
    anything in the rootfs (its top directory's mtime stays) and the next RUN reuses them."""
    scratch = tmp_path / "scratch"
    before, stamp = listing(rootfs), rootfs.stat().st_mtime_ns
    for _ in range(2):
        code, out = sh(rootfs, "cat /proc/1/comm; ls -d /dev/null /sys/kernel /tmp /run", tmp_path, scratch=scratch)
        assert code == 0 and out.split() == ["acbuild-init", "/dev/null", "/run", "/sys/kernel", "/tmp"], out
        assert listing(rootfs) == before and rootfs.stat().st_mtime_ns == stamp
    assert sorted(os.listdir(scratch / "lower")) == ["dev", "proc", "run", "sys", "tmp"]


def test_over_a_snapshot_upper_dir_missing_mount_points_touch_neither_rootfs_nor_upper(rootfs, tmp_path):
    """RUN as a snapshot (engine.execute.layer): the rootfs is a read-only lower layer, the
    scratch's lower dir lies below it with the missing mount points, and the upper dir
    gets only what the command wrote."""
    from acbuild.engine.execute.layer import new_upper

    scratch = tmp_path / "scratch"
    before, stamp = listing(rootfs), rootfs.stat().st_mtime_ns
    for n in range(2):
        upper = new_upper(rootfs, tmp_path / f"upper{n}")
        code, out = sh(rootfs, "ls -d /dev/null /proc/1 /sys/kernel /tmp /run; echo x > /made", tmp_path,
                       scratch=scratch, upper=upper)
        assert code == 0 and out.split() == ["/dev/null", "/proc/1", "/run", "/sys/kernel", "/tmp"], out
        assert listing(rootfs) == before and rootfs.stat().st_mtime_ns == stamp
        assert os.listdir(upper) == ["made"]
    assert sorted(os.listdir(scratch / "lower")) == ["dev", "proc", "run", "sys", "tmp"]


def test_the_engine_stays_in_its_own_pid_namespace(rootfs, tmp_path):
    """As root the engine forks init into a new PID namespace by unsharing it for that one
    fork: its later children (gpg, tar, the next RUN) must start in its own again."""
    def pid_namespaces() -> tuple[str, str]:
        return os.readlink("/proc/self/ns/pid"), os.readlink("/proc/self/ns/pid_for_children")

    before = pid_namespaces()
    assert before[0] == before[1]
    assert sh(rootfs, "true", tmp_path) == (0, "")
    assert pid_namespaces() == before
    child = subprocess.run(["readlink", "/proc/self/ns/pid"], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == before[0]


def test_where_the_overlay_fails_the_bound_rootfs_gets_its_mount_points_for_the_run(rootfs, tmp_path):
    """The scratch dir on another filesystem than the rootfs (tmpfs): overlayfs refuses
    the work dir, "/" is the rootfs bound on itself, and the mount points the lower dir
    would have provided are made in the rootfs for the run and removed after it."""
    scratch = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        before = listing(rootfs)
        code, out = sh(rootfs, "cat /proc/1/comm; ls -d /dev/null /tmp", tmp_path, scratch=scratch)
        assert code == 0 and out.split() == ["acbuild-init", "/dev/null", "/tmp"], out
        assert listing(rootfs) == before
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_debug_prints_each_step(rootfs, tmp_path, capfd):
    run_sandboxed(SandboxSpec(rootfs, ("true",), ()), debug=True)
    err = capfd.readouterr().err
    for text in ("make all mounts private", "mount proc on", "pivot_root into", "bring lo up", "create mount point"):
        assert f"sandbox: {text}" in err


# --- rootless: an unprivileged user, Debian's interpreter, a world-readable copy --------------

ROOTLESS_SCRIPT = """
import os, sys
from pathlib import Path
from acbuild.engine.execute.sandbox import SandboxSpec, run_sandboxed
root = Path(sys.argv[1])
with open(sys.argv[2], "wb") as out:
    code = run_sandboxed(SandboxSpec(root, ("/bin/sh", "-c", "id -u; id -g; ls /sys/class/net; touch /made"), ()),
                         stdout=out)
print("status", code)
try:
    run_sandboxed(SandboxSpec(root, ("/bin/sh",), (), user="5"))
except Exception as e:
    print(e)
"""


def test_rootless_runs_as_root_inside_and_files_belong_to_the_user(unprivileged_user):
    test_user = unprivileged_user
    require(Path("/usr/bin/python3").exists(), "needs Debian's /usr/bin/python3")
    top = Path(tempfile.mkdtemp(prefix="acbuild-rootless-"))
    try:
        top.chmod(0o755)
        shutil.copytree(REPO / "acbuild", top / "pkg/acbuild", ignore=shutil.ignore_patterns("__pycache__"))
        (top / "run.py").write_text(textwrap.dedent(ROOTLESS_SCRIPT))
        root = top / "rootfs"
        (root / "bin").mkdir(parents=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        for applet in ("sh", "id", "ls", "touch"):
            (root / "bin" / applet).symlink_to("busybox")
        work = top / "work"
        work.mkdir()
        for p in [root, *root.rglob("*"), work]:
            os.lchown(p, test_user.pw_uid, test_user.pw_gid)
        proc = subprocess.run(
            ["runuser", "-u", test_user.pw_name, "--", "/usr/bin/env", f"PYTHONPATH={top / 'pkg'}",
             "/usr/bin/python3", str(top / "run.py"), str(root), str(work / "out")],
            capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        status, refusal = proc.stdout.strip().splitlines()
        assert status == "status 0"
        assert refusal.startswith("RUN: cannot run as 5:0: id 5 is not mapped: "), refusal
        assert (work / "out").read_text().split() == ["0", "0", "lo"]
        made = (root / "made").stat()
        assert (made.st_uid, made.st_gid) == (test_user.pw_uid, test_user.pw_gid)
        assert sorted(p.name for p in root.iterdir()) == ["bin", "made"]
    finally:
        shutil.rmtree(top)


# --- Ctrl-C: the whole tree dies, nothing stays ------------------------------------------------

DRIVER = """
import sys
from pathlib import Path
from acbuild.engine.execute.sandbox import Bind, SandboxSpec, run_sandboxed
root, mark, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
try:
    run_sandboxed(SandboxSpec(root, ("/bin/sh", "-c", f"touch /mark/started; sleep {seconds}; echo no"), (),
                              binds=(Bind(mark, "/mark", read_only=False),)))
    print("finished")
except KeyboardInterrupt:
    print("interrupted")
    sys.exit(130)
"""


# Unique to this test run, so another run on the machine (CI beside a developer) never counts.
SLEEP = 4000 + os.getpid() % 5000


def sleepers() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"sleep\0{SLEEP}".encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_kills_the_tree_and_cleans_up(rootfs, tmp_path, sig):
    mark = tmp_path / "mark"
    mark.mkdir()
    (tmp_path / "driver.py").write_text(textwrap.dedent(DRIVER))
    before = listing(rootfs)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    driver = subprocess.Popen([sys.executable, str(tmp_path / "driver.py"), str(rootfs), str(mark), str(SLEEP)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (mark / "started").exists() or not sleepers():
            assert driver.poll() is None, driver.communicate()
            assert time.monotonic() < deadline, "the sandboxed command did not start"
            time.sleep(0.02)
        driver.send_signal(sig)
        out, err = driver.communicate(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert (driver.returncode, out.strip()) == (130, "interrupted"), err
    assert sleepers() == []
    assert str(rootfs) not in host_mountinfo()
    assert listing(rootfs) == before  # /mark, /proc, /dev, ... placeholders removed
    assert sh(rootfs, "echo again", tmp_path) == (0, "again\n")  # the next run works
