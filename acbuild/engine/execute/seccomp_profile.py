"""Docker's default seccomp profile, as our own table, and the filter built from it.

Source: moby/profiles `seccomp/default.json` (commit cd3bed8, 2026-06-30), the profile
`docker run` applies by default. Its semantics, kept here: everything not allowed fails
with EPERM (defaultAction SCMP_ACT_ERRNO, defaultErrnoRet 1); a rule gated on a capability
("includes": {"caps": [...]}) applies when the sandbox keeps that capability, one gated on
its absence ("excludes") when it does not; "arches" rules apply on those architectures;
argument rules (socket, personality, clone) are compared as Docker compares them; the
architecture's sub-architectures (x86_64: i386 and x32) are filtered the same way.

Built with libseccomp's Python binding (hardening._seccomp_binding); this module itself is
stdlib only. Names libseccomp does not know (newer than the binding: Debian 12's 2.5.4
lacks statmount, listmount, mseal, the *xattrat calls, uretprobe) cannot be added and so
get EPERM, as every syscall newer than the table does; runc's "ENOSYS for syscalls newer
than the profile" stub is not reproduced.
"""

from __future__ import annotations

import errno
from typing import Iterable

# The profile's unconditional allow rule, verbatim (names of every architecture: a name
# the architecture lacks is skipped).
ALLOWED = (
    "accept", "accept4", "access", "adjtimex", "alarm", "bind", "brk", "cachestat", "capget",
    "capset", "chdir", "chmod", "chown", "chown32", "clock_adjtime", "clock_adjtime64",
    "clock_getres", "clock_getres_time64", "clock_gettime", "clock_gettime64", "clock_nanosleep",
    "clock_nanosleep_time64", "close", "close_range", "connect", "copy_file_range", "creat", "dup",
    "dup2", "dup3", "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_pwait",
    "epoll_pwait2", "epoll_wait", "epoll_wait_old", "eventfd", "eventfd2", "execve", "execveat",
    "exit", "exit_group", "faccessat", "faccessat2", "fadvise64", "fadvise64_64", "fallocate",
    "fanotify_mark", "fchdir", "fchmod", "fchmodat", "fchmodat2", "fchown", "fchown32", "fchownat",
    "fcntl", "fcntl64", "fdatasync", "fgetxattr", "flistxattr", "flock", "fork", "fremovexattr",
    "fsetxattr", "fstat", "fstat64", "fstatat64", "fstatfs", "fstatfs64", "fsync", "ftruncate",
    "ftruncate64", "futex", "futex_requeue", "futex_time64", "futex_wait", "futex_waitv",
    "futex_wake", "futimesat", "getcpu", "getcwd", "getdents", "getdents64", "getegid", "getegid32",
    "geteuid", "geteuid32", "getgid", "getgid32", "getgroups", "getgroups32", "getitimer",
    "getpeername", "getpgid", "getpgrp", "getpid", "getppid", "getpriority", "getrandom",
    "getresgid", "getresgid32", "getresuid", "getresuid32", "getrlimit", "get_robust_list",
    "getrusage", "getsid", "getsockname", "getsockopt", "get_thread_area", "gettid", "gettimeofday",
    "getuid", "getuid32", "getxattr", "getxattrat", "inotify_add_watch", "inotify_init",
    "inotify_init1", "inotify_rm_watch", "io_cancel", "ioctl", "io_destroy", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64", "ioprio_get", "ioprio_set", "io_setup", "io_submit",
    "ipc", "kill", "landlock_add_rule", "landlock_create_ruleset", "landlock_restrict_self",
    "lchown", "lchown32", "lgetxattr", "link", "linkat", "listen", "listmount", "listxattr",
    "listxattrat", "llistxattr", "_llseek", "lremovexattr", "lseek", "lsetxattr", "lstat",
    "lstat64", "madvise", "map_shadow_stack", "membarrier", "memfd_create", "memfd_secret",
    "mincore", "mkdir", "mkdirat", "mknod", "mknodat", "mlock", "mlock2", "mlockall", "mmap",
    "mmap2", "mprotect", "mq_getsetattr", "mq_notify", "mq_open", "mq_timedreceive",
    "mq_timedreceive_time64", "mq_timedsend", "mq_timedsend_time64", "mq_unlink", "mremap", "mseal",
    "msgctl", "msgget", "msgrcv", "msgsnd", "msync", "munlock", "munlockall", "munmap",
    "name_to_handle_at", "nanosleep", "newfstatat", "_newselect", "open", "openat", "openat2",
    "pause", "pidfd_open", "pidfd_send_signal", "pipe", "pipe2", "pkey_alloc", "pkey_free",
    "pkey_mprotect", "poll", "ppoll", "ppoll_time64", "prctl", "pread64", "preadv", "preadv2",
    "prlimit64", "process_mrelease", "pselect6", "pselect6_time64", "pwrite64", "pwritev",
    "pwritev2", "read", "readahead", "readlink", "readlinkat", "readv", "recv", "recvfrom",
    "recvmmsg", "recvmmsg_time64", "recvmsg", "remap_file_pages", "removexattr", "removexattrat",
    "rename", "renameat", "renameat2", "restart_syscall", "riscv_hwprobe", "rmdir", "rseq",
    "rt_sigaction", "rt_sigpending", "rt_sigprocmask", "rt_sigqueueinfo", "rt_sigreturn",
    "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64", "rt_tgsigqueueinfo",
    "sched_getaffinity", "sched_getattr", "sched_getparam", "sched_get_priority_max",
    "sched_get_priority_min", "sched_getscheduler", "sched_rr_get_interval",
    "sched_rr_get_interval_time64", "sched_setaffinity", "sched_setattr", "sched_setparam",
    "sched_setscheduler", "sched_yield", "seccomp", "select", "semctl", "semget", "semop",
    "semtimedop", "semtimedop_time64", "send", "sendfile", "sendfile64", "sendmmsg", "sendmsg",
    "sendto", "setfsgid", "setfsgid32", "setfsuid", "setfsuid32", "setgid", "setgid32", "setgroups",
    "setgroups32", "setitimer", "setpgid", "setpriority", "setregid", "setregid32", "setresgid",
    "setresgid32", "setresuid", "setresuid32", "setreuid", "setreuid32", "setrlimit",
    "set_robust_list", "setsid", "setsockopt", "set_thread_area", "set_tid_address", "setuid",
    "setuid32", "setxattr", "setxattrat", "shmat", "shmctl", "shmdt", "shmget", "shutdown",
    "sigaltstack", "signalfd", "signalfd4", "sigprocmask", "sigreturn", "socketcall", "socketpair",
    "splice", "stat", "stat64", "statfs", "statfs64", "statmount", "statx", "symlink", "symlinkat",
    "sync", "sync_file_range", "syncfs", "sysinfo", "tee", "tgkill", "time", "timer_create",
    "timer_delete", "timer_getoverrun", "timer_gettime", "timer_gettime64", "timer_settime",
    "timer_settime64", "timerfd_create", "timerfd_gettime", "timerfd_gettime64", "timerfd_settime",
    "timerfd_settime64", "times", "tkill", "truncate", "truncate64", "ugetrlimit", "umask", "uname",
    "unlink", "unlinkat", "uretprobe", "utime", "utimensat", "utimensat_time64", "utimes", "vfork",
    "vmsplice", "wait4", "waitid", "waitpid", "write", "writev",
    # "includes": {"minKernel": "4.8"} (ptrace can no longer bypass seccomp there); this
    # sandbox needs a newer kernel anyway (overlayfs volatile, close_range)
    "process_vm_readv", "process_vm_writev", "ptrace",
)

# Allowed only on these architectures (the profile's names, libseccomp's spelling).
ARCH_ALLOWED = {
    "ppc64le": ("sync_file_range2", "swapcontext"),
    "arm": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"),
    "aarch64": ("arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush",
                "set_tls"),
    "x86_64": ("arch_prctl", "modify_ldt"),
    "x32": ("arch_prctl", "modify_ldt"),
    "x86": ("modify_ldt",),
    "s390": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "s390x": ("s390_pci_mmio_read", "s390_pci_mmio_write", "s390_runtime_instr"),
    "riscv64": ("riscv_flush_icache",),
}

# Allowed only to a container holding the capability ("includes": {"caps": [CAP]}).
CAPABILITY_ALLOWED = {
    "CAP_DAC_READ_SEARCH": ("open_by_handle_at",),
    "CAP_SYS_ADMIN": ("bpf", "clone", "clone3", "fanotify_init", "fsconfig", "fsmount", "fsopen", "fspick",
                      "lookup_dcookie", "lsm_get_self_attr", "lsm_list_modules", "lsm_set_self_attr", "mount",
                      "mount_setattr", "move_mount", "open_tree", "perf_event_open", "quotactl", "quotactl_fd",
                      "setdomainname", "sethostname", "setns", "syslog", "umount", "umount2", "unshare"),
    "CAP_SYS_BOOT": ("reboot",),
    "CAP_SYS_CHROOT": ("chroot",),
    "CAP_SYS_MODULE": ("delete_module", "init_module", "finit_module"),
    "CAP_SYS_PACCT": ("acct",),
    "CAP_SYS_PTRACE": ("kcmp", "pidfd_getfd", "process_madvise", "process_vm_readv", "process_vm_writev", "ptrace"),
    "CAP_SYS_RAWIO": ("iopl", "ioperm"),
    "CAP_SYS_TIME": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "CAP_SYS_TTY_CONFIG": ("vhangup",),
    "CAP_SYS_NICE": ("get_mempolicy", "mbind", "set_mempolicy", "set_mempolicy_home_node"),
    "CAP_SYSLOG": ("syslog",),
    "CAP_BPF": ("bpf",),
    "CAP_PERFMON": ("perf_event_open",),
}

# Argument rules: allowed when argument 0 compares so ("LT", "EQ", "GT" against the value).
# socket: every address family but AF_ALG (38) and AF_VSOCK (40).
SOCKET_FAMILIES = (("LT", 38), ("EQ", 39), ("GT", 40))
# personality: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query 0xffffffff.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
# Without CAP_SYS_ADMIN: clone only when (flags & this) == 0, no new namespace (NEWNS,
# NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET); flags are argument 0, on s390
# argument 1. clone3 (flags in memory the filter cannot read) gets ENOSYS, so libc falls
# back to clone.
CLONE_NAMESPACE_MASK = 0x7E020000
CLONE3_ERRNO = errno.ENOSYS
DEFAULT_ERRNO = errno.EPERM

# archMap: the architectures filtered beside the native one.
SUB_ARCHITECTURES = {"x86_64": ("x86", "x32"), "aarch64": ("arm",), "s390x": ("s390",)}
# libseccomp's Arch attribute for the architecture names above.
_UNKNOWN_NAME = -1  # resolve_syscall's answer for a name it knows on no architecture (__NR_SCMP_ERROR)
_ARCH_ATTRS = {"x86_64": "X86_64", "x86": "X86", "x32": "X32", "aarch64": "AARCH64", "arm": "ARM",
               "s390x": "S390X", "s390": "S390", "ppc64le": "PPC64LE", "riscv64": "RISCV64"}


def allowed_names(arch: str, capabilities: Iterable[str]) -> set[str]:
    """Every name the profile allows outright on `arch` to a holder of `capabilities`."""
    names = set(ALLOWED) | set(ARCH_ALLOWED.get(arch, ()))
    for cap in capabilities:
        names |= set(CAPABILITY_ALLOWED.get(cap, ()))
    return names


def build_filter(seccomp, native: str, capabilities: Iterable[str]):
    """The profile as a seccomp.SyscallFilter for a process keeping `capabilities`, on the
    `native` architecture (os.uname().machine) and its sub-architectures."""
    caps = set(capabilities)
    f = seccomp.SyscallFilter(seccomp.ERRNO(DEFAULT_ERRNO))
    f.set_attr(seccomp.Attr.CTL_NNP, 0)  # no_new_privs is the sandbox's decision, not libseccomp's
    f.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)  # a binary tree: ~9 compares a syscall, not ~380
    arches = (native, *SUB_ARCHITECTURES.get(native, ()))
    for sub in arches[1:]:
        f.add_arch(getattr(seccomp.Arch, _ARCH_ATTRS[sub]))
    names = set()
    for arch in arches:
        names |= allowed_names(arch, caps)
    names -= {"clone", "clone3"} if "CAP_SYS_ADMIN" not in caps else set()
    for name in sorted(names):
        _allow(seccomp, f, name)
    for op, value in SOCKET_FAMILIES:
        _allow(seccomp, f, "socket", seccomp.Arg(0, getattr(seccomp, op), value))
    for value in PERSONALITIES:
        _allow(seccomp, f, "personality", seccomp.Arg(0, seccomp.EQ, value))
    if "CAP_SYS_ADMIN" not in caps:
        flags_arg = 1 if native.startswith("s390") else 0
        _allow(seccomp, f, "clone", seccomp.Arg(flags_arg, seccomp.MASKED_EQ, CLONE_NAMESPACE_MASK, 0))
        f.add_rule(seccomp.ERRNO(CLONE3_ERRNO), "clone3")
    return f


def _allow(seccomp, f, name: str, *args) -> None:
    """Add an allow rule; a name this libseccomp cannot resolve stays refused (see above)."""
    if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == _UNKNOWN_NAME:
        return
    f.add_rule(seccomp.ALLOW, name, *args)
