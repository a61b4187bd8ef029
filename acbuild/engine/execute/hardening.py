"""What a sandboxed command may not do, set the way a default OCI runtime sets it.

The yardsticks are runc's default spec (`runc spec`) and Docker's default profile:

- capabilities: Docker's default bounding set less CAP_MKNOD (no RUN step or app makes a
  device node); inheritable and ambient sets emptied, so an exec as root ends with exactly
  `KEPT_CAPABILITIES`;
- syscalls: Docker's default seccomp profile (seccomp_profile: an allow-list, EPERM for
  everything else, clone without namespace flags, clone3 ENOSYS so that libc falls back to
  clone). It is loaded last, after the sandbox's own mounts;
- kernel paths: runc's masked paths (empty: /dev/null on files, a read-only empty tmpfs on
  directories) and read-only paths;
- descriptors: nothing above 2 reaches the command;
- no_new_privs when the command needs no setuid (see `SandboxSpec.no_new_privileges`).

The seccomp filter is compiled to BPF in the parent, with libseccomp's own Python binding
(Debian: python3-seccomp; it is maintained with libseccomp, and a hand-written BPF program
would have to track syscall numbers per architecture), and kept in the cache dir. The
child only loads it. The rest
is stdlib + ctypes: this module runs in the freshly forked child and must stay light.
"""

from __future__ import annotations

import ctypes
import os
import zlib

from acbuild.atomic import write_atomic
from acbuild.dirs import cache_root, private_dir
from acbuild.engine.execute import seccomp_profile
from acbuild.errors import BuildError

# Docker's default capability set (moby oci/caps/defaults.go) without CAP_MKNOD.
KEPT_CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}

from acbuild.limits import DEFAULT_TMPFS_SIZE  # noqa: E402,F401  (each of /tmp, /run and /dev/shm)

# runc's default spec, verbatim.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi")
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
PR_SET_DUMPABLE, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 4, 22, 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg2: int = 0, arg3: int = 0) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3), 0, 0), "prctl")


# --- parent side -----------------------------------------------------------------------------

_filter = None
_program = None  # (the BPF bytes, the struct sock_fprog pointing at them) for PR_SET_SECCOMP
_last_cap: int | None = None


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def prepare() -> None:
    """What the child needs ready-made (it only applies it): the filter as a BPF program
    and the kernel's highest capability number. Once per process; BuildError if unavailable.
    libseccomp's load() generates the program anew on each call (20 ms for this profile,
    in every RUN), and building and exporting it costs 12-40 ms, which every interactive
    `acbuild run` would pay: so the program is kept in the cache dir (private, 0700),
    under a key of everything that decides it, and only rebuilt when that changes."""
    global _last_cap, _program
    if _program is None:
        _program = _as_fprog(_cached_program())
    if _last_cap is None:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            _last_cap = int(f.read())


def _cached_program() -> bytes:
    path = cache_root() / "seccomp" / f"{_program_key()}.bpf"
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            raw = f.read()
        # ours alone (nobody else may have written the filter), whole sock_filter instructions
        if st.st_uid == os.geteuid() and not st.st_mode & 0o022 and raw and len(raw) % 8 == 0:
            return raw
    except OSError:
        pass
    raw = _export(syscall_filter())
    try:
        private_dir(private_dir(cache_root()) / "seccomp")
        write_atomic(path, raw, 0o600)
    except OSError:  # no writable cache is no reason to fail a RUN
        pass
    return raw


def _program_key() -> str:
    """What decides the program, spelled out (no digest: hashlib's OpenSSL was 3 ms of an
    interactive `acbuild run`): the architecture, the profile's and this module's files
    (the capabilities kept are here) and libseccomp's binding (Debian ships it with
    libseccomp itself), each by size, mtime and inode, as .pyc files are checked; and a
    CRC of their paths, which only tells installs apart."""
    files = (seccomp_profile.__file__, __file__, _binding_path())
    stats = [os.stat(f) for f in files]
    where = zlib.crc32(repr(files).encode())
    return "-".join([os.uname().machine, *(f"{st.st_size}.{st.st_mtime_ns}.{st.st_ino}" for st in stats), f"{where:08x}"])


def _export(filter_) -> bytes:
    with open(os.memfd_create("acbuild-seccomp", os.MFD_CLOEXEC), "w+b") as f:
        filter_.export_bpf(f)
        f.seek(0)
        return f.read()


def _as_fprog(raw: bytes) -> tuple[ctypes.Array, _SockFprog]:
    buf = ctypes.create_string_buffer(raw, len(raw))
    return buf, _SockFprog(len(raw) // 8, ctypes.cast(buf, ctypes.c_void_p))  # 8 bytes a sock_filter


def syscall_filter():
    """The compiled seccomp filter (a seccomp.SyscallFilter): Docker's default profile for
    a process keeping KEPT_CAPABILITIES (seccomp_profile), built once per process."""
    global _filter
    if _filter is None:
        _filter = seccomp_profile.build_filter(_seccomp_binding(), os.uname().machine, KEPT_CAPABILITIES)
    return _filter


def _seccomp_binding():
    """libseccomp's binding, imported from `_binding_path()`."""
    import importlib.util
    import sys

    if "seccomp" in sys.modules:
        return sys.modules["seccomp"]
    spec = importlib.util.spec_from_file_location("seccomp", _binding_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules["seccomp"] = module
    return module


def _binding_path() -> str:
    """Where libseccomp's binding is: importable, or (a venv made from Debian's python3 does
    not see the system dist-packages) Debian's build of it there (same interpreter, same ABI)."""
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("seccomp")
    if spec is not None and spec.origin:
        return spec.origin
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = f"/usr/lib/python3/dist-packages/seccomp{suffix}"
        if os.path.exists(path):
            return path
    raise BuildError("the sandbox needs libseccomp's Python binding for its syscall filter "
                     "(Debian: apt-get install python3-seccomp)")


# --- child side: called in order in init, right before it spawns the command ----------------

def close_inherited(keep: set[int]) -> None:
    """Close every descriptor except `keep` (one close_range(2) per gap)."""
    low = 0
    for fd in sorted(keep | {-1}):
        if fd < 0:
            continue
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, 1 << 30)


def make_undumpable() -> None:
    """Init keeps the parent's memory: the command must not read it through /proc/1 or
    ptrace. Called after the id change, which resets the flag."""
    _prctl(PR_SET_DUMPABLE, 0)


def drop_capabilities() -> None:
    """Bounding set = KEPT_CAPABILITIES; inheritable and ambient empty. Effective caps are
    untouched here (the id switch still needs them); exec recomputes the command's from these."""
    assert _last_cap is not None, "hardening.prepare() runs in the parent first"
    kept = set(KEPT_CAPABILITIES.values())
    for cap in range(_last_cap + 1):
        if cap not in kept:
            _prctl(PR_CAPBSET_DROP, cap)
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()  # two {effective, permitted, inheritable} words
    _check(_libc.capget(header, data), "capget")
    data[2] = data[5] = 0
    _check(_libc.capset(header, data), "capset")


def lock_down(no_new_privileges: bool) -> None:
    """no_new_privs (if asked), then the syscall filter: from here on, the command's rules.
    Without no_new_privs the filter needs CAP_SYS_ADMIN, which the effective set (root, or
    root of the rootless user namespace) still has until exec."""
    assert _program is not None, "hardening.prepare() runs in the parent first"
    if no_new_privileges:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _check(_libc.prctl(ctypes.c_int(PR_SET_SECCOMP), ctypes.c_ulong(SECCOMP_MODE_FILTER),
                       ctypes.byref(_program[1]), 0, 0), "seccomp")
