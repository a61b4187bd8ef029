"""What a sandboxed command may not do, set the way a default OCI runtime sets it.

The yardsticks are runc's default spec (`runc spec`) and Docker's default profile:

- capabilities: Docker's default bounding set less CAP_MKNOD (no RUN step or app makes a
  device node); inheritable and ambient sets emptied, so an exec as root ends with exactly
  `KEPT_CAPABILITIES`;
- syscalls: a seccomp filter that refuses, with EPERM, what Docker's default profile refuses
  a container without CAP_SYS_ADMIN (its documented list, plus the mount API, io_uring and
  clone3, which returns ENOSYS so that libc falls back to clone, whose namespace flags the
  filter can see). It is loaded last, after the sandbox's own mounts;
- kernel paths: runc's masked paths (empty: /dev/null on files, a read-only empty tmpfs on
  directories) and read-only paths;
- descriptors: nothing above 2 reaches the command;
- no_new_privs when the command needs no setuid (see `SandboxSpec.no_new_privileges`).

The seccomp filter is compiled once in the parent with libseccomp's own Python binding
(Debian: python3-seccomp; it is maintained with libseccomp, and a hand-written BPF program
would have to track syscall numbers per architecture). The child only loads it. The rest
is stdlib + ctypes: this module runs in the freshly forked child and must stay light.
"""

from __future__ import annotations

import ctypes
import errno
import os

from acbuild.errors import BuildError

# Docker's default capability set (moby oci/caps/defaults.go) without CAP_MKNOD.
KEPT_CAPABILITIES = {
    "CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_FSETID": 4, "CAP_KILL": 5,
    "CAP_SETGID": 6, "CAP_SETUID": 7, "CAP_SETPCAP": 8, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_RAW": 13,
    "CAP_SYS_CHROOT": 18, "CAP_AUDIT_WRITE": 29, "CAP_SETFCAP": 31,
}

# Refused with EPERM (Docker: "Significant syscalls blocked by the default profile", and the
# ones its allow-list grants only with CAP_SYS_ADMIN, CAP_SYS_MODULE... which we drop).
DENIED_SYSCALLS = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
    "query_module", "quotactl", "quotactl_fd", "reboot", "request_key", "set_mempolicy", "setns",
    "settimeofday", "stime", "swapon", "swapoff", "sysfs", "_sysctl", "umount", "umount2", "unshare",
    "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
    # the new mount API: mount(2) by other means
    "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr",
    # io_uring: Docker dropped it from its default profile (moby 25)
    "io_uring_setup", "io_uring_enter", "io_uring_register",
)
# clone(2) with any of these (new namespaces: mount, UTS, IPC, user, PID, net, cgroup).
NAMESPACE_FLAGS = (0x00020000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000, 0x02000000)

from acbuild.limits import DEFAULT_TMPFS_SIZE  # noqa: E402,F401  (each of /tmp, /run and /dev/shm)

# runc's default spec, verbatim.
MASKED_PATHS = ("/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi")
READ_ONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 24, 38, 47, 4
PR_SET_DUMPABLE = 4
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
_last_cap: int | None = None


def prepare() -> None:
    """What the child needs ready-made (it only loads and applies): the compiled filter and
    the kernel's highest capability number. Once per process; BuildError if unavailable."""
    global _last_cap
    syscall_filter()
    if _last_cap is None:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            _last_cap = int(f.read())


def syscall_filter():
    """The compiled seccomp filter (a seccomp.SyscallFilter), built once per process."""
    global _filter
    if _filter is None:
        seccomp = _seccomp_binding()
        f = seccomp.SyscallFilter(seccomp.ALLOW)
        f.set_attr(seccomp.Attr.CTL_NNP, 0)  # no_new_privs is our decision (spec), not libseccomp's
        for name in DENIED_SYSCALLS:
            f.add_rule(seccomp.ERRNO(errno.EPERM), name)
        for flag in NAMESPACE_FLAGS:  # x86_64, arm64 and most: flags are clone's first argument
            f.add_rule(seccomp.ERRNO(errno.EPERM), "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")  # its flags sit in memory the filter cannot read
        _filter = f
    return _filter


def _seccomp_binding():
    """libseccomp's binding; a venv made from Debian's python3 does not see the system
    dist-packages, so look for Debian's build of it there (same interpreter, same ABI)."""
    try:
        import seccomp
        return seccomp
    except ImportError:
        pass
    import importlib.machinery
    import importlib.util
    import sys

    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = f"/usr/lib/python3/dist-packages/seccomp{suffix}"
        if os.path.exists(path):
            spec = importlib.util.spec_from_file_location("seccomp", path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            sys.modules["seccomp"] = module
            return module
    raise BuildError("the sandbox needs libseccomp's Python binding for its syscall filter "
                     "(Debian: apt-get install python3-seccomp)")


# --- child side: called in order, right before exec ------------------------------------------

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
    """Init keeps the parent's memory: the command must not read it through /proc/1 or ptrace."""
    _prctl(PR_SET_DUMPABLE, 0)


def drop_capabilities() -> None:
    """Bounding set = KEPT_CAPABILITIES; inheritable and ambient empty. Effective caps are
    untouched here (the id switch still needs them); exec recomputes them from these."""
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


def lock_down(filter_, no_new_privileges: bool) -> None:
    """no_new_privs (if asked), then the syscall filter: from here on, the command's rules."""
    if no_new_privileges:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
    filter_.load()
