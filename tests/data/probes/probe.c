/* The sandbox probe: each mode tries one way out and prints what happened.
 *   probe handle           print the file handle of "." (run on the host, by the test)
 *   probe open-handle HEX  open_by_handle_at(HEX) relative to "/" and list what it opens
 *   probe fds              list every open descriptor above 2
 *   probe syscalls         try syscalls Docker's default profile forbids (and a few it allows)
 *   probe euid             print the effective uid (run as another user on a setuid copy)
 * Exit status 0 means the probe ran; the verdict is in what it prints. Static: runs in
 * an image holding nothing but busybox. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static int handle(void) {
    struct { struct file_handle fh; unsigned char raw[128]; } h;
    int mount_id;
    h.fh.handle_bytes = sizeof h.raw;
    if (name_to_handle_at(AT_FDCWD, ".", &h.fh, &mount_id, 0) < 0) { perror("name_to_handle_at"); return 1; }
    printf("%d:", h.fh.handle_type);
    for (unsigned i = 0; i < h.fh.handle_bytes; i++) printf("%02x", h.fh.f_handle[i]);
    printf("\n");
    return 0;
}

static int open_handle(const char *text) {
    struct { struct file_handle fh; unsigned char raw[128]; } h;
    const char *hex = strchr(text, ':');
    if (!hex) { printf("open_by_handle_at: no handle given\n"); return 2; }
    h.fh.handle_type = atoi(text);
    h.fh.handle_bytes = strlen(++hex) / 2;
    for (unsigned i = 0; i < h.fh.handle_bytes && i < sizeof h.raw; i++) sscanf(hex + 2 * i, "%2hhx", &h.fh.f_handle[i]);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    int fd = (int)syscall(SYS_open_by_handle_at, root, &h.fh, O_RDONLY | O_DIRECTORY);
    if (fd < 0) { printf("open_by_handle_at: refused (%s)\n", strerror(errno)); return 0; }
    printf("open_by_handle_at: OPENED\n");
    DIR *d = fdopendir(fd);
    for (struct dirent *e; d && (e = readdir(d));) printf("entry %s\n", e->d_name);
    return 0;
}

static int fds(void) {
    DIR *d = opendir("/proc/self/fd");
    if (!d) { perror("/proc/self/fd"); return 1; }
    int found = 0;
    for (struct dirent *e; (e = readdir(d));) {
        int n = atoi(e->d_name);
        if (e->d_name[0] == '.' || n <= 2 || n == dirfd(d)) continue;
        char path[64], target[4096] = "";
        snprintf(path, sizeof path, "/proc/self/fd/%d", n);
        ssize_t len = readlink(path, target, sizeof target - 1);
        if (len > 0) target[len] = 0;
        printf("fd %d: INHERITED %s\n", n, target);
        found = 1;
    }
    if (!found) printf("fds: none above 2\n");
    return 0;
}

static void verdict(const char *name, long ret) {
    if (ret < 0) printf("%s: refused (%s)\n", name, strerror(errno));
    else printf("%s: ALLOWED\n", name);
}

static int child(void *arg) { (void)arg; return 0; }

static int syscalls(void) {
    static char stack[65536];
    verdict("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    verdict("add_key", syscall(SYS_add_key, "user", "acbuild-probe", "x", 1, -3));
    verdict("bpf", syscall(SYS_bpf, 0 /* BPF_MAP_CREATE */, NULL, 0) < 0 && errno == EFAULT ? 0 : -1);
    verdict("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0) < 0 && errno == EINVAL ? 0 : -1);
    verdict("unshare-user", unshare(CLONE_NEWUSER));
    verdict("unshare-mount", unshare(CLONE_NEWNS));
    pid_t pid = clone(child, stack + sizeof stack, CLONE_NEWUSER | SIGCHLD, NULL);
    if (pid > 0) waitpid(pid, NULL, 0);
    verdict("clone-newuser", pid);
    verdict("mount-tmpfs", mount("none", "/tmp", "tmpfs", 0, NULL));
    verdict("umount-proc-mask", umount2("/proc/kcore", MNT_DETACH));
    verdict("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0) < 0 && errno == EFAULT ? 0 : -1);
    verdict("name_to_handle_at", syscall(SYS_name_to_handle_at, AT_FDCWD, "/", NULL, NULL, 0) < 0 && errno == EFAULT ? 0 : -1);
    verdict("reboot", syscall(SYS_reboot, 0, 0, 0, NULL) < 0 && errno == EINVAL ? 0 : -1);
    /* Outside Docker's allow-list, though harmless-looking: the profile's default (EPERM). */
    verdict("personality-no-randomize", syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */));
    int self = (int)syscall(SYS_pidfd_open, getpid(), 0);
    verdict("pidfd_getfd", self < 0 ? 0 : syscall(SYS_pidfd_getfd, self, 1, 0));
    verdict("unlisted-syscall", syscall(1000) < 0 && errno == ENOSYS ? 0 : -1);
    long vsock = syscall(SYS_socket, 40 /* AF_VSOCK */, SOCK_STREAM, 0);
    verdict("socket-vsock", vsock >= 0 || errno != EPERM ? 0 : -1);  /* reached the kernel, or not */
    /* Inside it: these must keep working. */
    printf("personality-query: %s\n", syscall(SYS_personality, 0xffffffff) < 0 ? strerror(errno) : "works");
    printf("socket-unix: %s\n", syscall(SYS_socket, AF_UNIX, SOCK_STREAM, 0) < 0 ? strerror(errno) : "works");
    pid_t kid = fork();
    if (kid == 0) _exit(0);
    printf("fork: %s\n", kid < 0 ? strerror(errno) : (waitpid(kid, NULL, 0), "works"));
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc == 2 && !strcmp(argv[1], "handle")) return handle();
    if (argc == 3 && !strcmp(argv[1], "open-handle")) return open_handle(argv[2]);
    if (argc == 2 && !strcmp(argv[1], "fds")) return fds();
    if (argc == 2 && !strcmp(argv[1], "syscalls")) return syscalls();
    if (argc == 2 && !strcmp(argv[1], "euid")) { printf("euid %d\n", (int)geteuid()); return 0; }
    fprintf(stderr, "usage: probe handle | open-handle HEX | fds | syscalls | euid\n");
    return 2;
}
