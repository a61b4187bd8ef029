#!/bin/sh
# The sandbox probes (tests/test_sandbox_probes.py): one "NAME: verdict" line each.
# An upper-case verdict word (ALLOWED, OPENED, INHERITED, WRITTEN, REACHED) is a hole.
# Arguments: KEY=VALUE settings (CANARY_HANDLE, HOST_PORT), then the probes to run
# (default: all).
all="caps handle fds syscalls core_pattern sysfs mknod node mountinfo tmpfs masked network"
probes=""
for a in "$@"; do
  case $a in *=*) export "$a" ;; *) probes="$probes $a" ;; esac
done
for p in ${probes:-$all}; do
  case $p in
  caps) grep -E '^Cap(Eff|Bnd|Prm|Inh|Amb)' /proc/self/status | sed 's/^/caps /'
        grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^/caps /' ;;
  handle) /probe open-handle "$CANARY_HANDLE" ;;
  fds) /probe fds ;;
  syscalls) /probe syscalls ;;
  core_pattern)  # writes back the value it read: proves the write, changes nothing
    v=$(cat /proc/sys/kernel/core_pattern)
    if (printf '%s\n' "$v" > /proc/sys/kernel/core_pattern) 2>/dev/null; then echo "core_pattern: WRITTEN"
    else echo "core_pattern: refused"; fi ;;
  sysfs)
    if mount -o remount,rw /sys 2>/dev/null; then echo "sysfs-remount: ALLOWED"; else echo "sysfs-remount: refused"; fi
    if (: > /sys/kernel/uevent_helper) 2>/dev/null; then echo "sysfs-write: WRITTEN"; else echo "sysfs-write: refused"; fi ;;
  mknod)  # /dev/kmsg's numbers: a write would land in the host's kernel log
    if mknod /probe-kmsg c 1 11 2>/dev/null; then
      if (echo "acbuild sandbox probe" > /probe-kmsg) 2>/dev/null; then echo "mknod: WRITTEN"
      else echo "mknod: made, refused"; fi
      rm -f /probe-kmsg
    else echo "mknod: refused"; fi ;;
  node)  # /shipped-zero: a 0666 character device (1,5) the image itself carries
    if [ -e /shipped-zero ]; then
      if head -c 1 /shipped-zero > /dev/null 2>&1; then echo "shipped-node: OPENED as $(id -u)"
      else echo "shipped-node: refused as $(id -u)"; fi
    else echo "shipped-node: absent"; fi ;;
  mountinfo) sed 's/^/mountinfo /' /proc/self/mountinfo ;;
  tmpfs) for d in /tmp /run /dev/shm /dev; do df -k "$d" | tail -n 1 | awk -v d="$d" '{print "tmpfs " d " " $2}'; done ;;
  masked)
    for f in /proc/kcore /proc/keys /proc/timer_list /proc/sched_debug /proc/latency_stats; do
      [ -e "$f" ] && echo "masked $f $(head -c 4096 "$f" 2>/dev/null | wc -c)"
    done
    echo "masked /sys/firmware $(ls -A /sys/firmware 2>/dev/null | wc -l)"
    if (echo h > /proc/sysrq-trigger) 2>/dev/null; then echo "sysrq: WRITTEN"; else echo "sysrq: refused"; fi ;;
  network)
    if wget -q -T 3 -O - "http://127.0.0.1:$HOST_PORT/" 2>/dev/null; then echo; echo "network: REACHED"
    else echo "network: refused"; fi ;;
  esac
done
echo "probes: done"
