#!/usr/bin/env bash
# Where the metadata path's time goes, per FUSE request (issue 19):
#   sudo scripts/profile-meta.sh BINARY [TARBALL]
# On a fresh volume mounted by BINARY (caches dropped before each step): unpack TARBALL
# (default: the fs/ and include/ subtrees of Debian's linux-source-6.1, ~8,400 entries),
# `ls -lR` it, `stat` every entry. For each step: the daemon's CPU (user + system, from
# /proc) per entry, and, from the kernel's fuse:fuse_request_send/end tracepoints, how many
# requests of each kind it sent and their mean and median latency. MOUNT_ARGS (say
# `--io-uring`) are passed to the mount. Needs root and perf; not part of CI.
set -euo pipefail
[ $# -ge 1 ] || { sed -n '2,8p' "$0"; exit 2; }
BIN=$(realpath "$1"); TAR=${2:-}
[ "$(id -u)" -eq 0 ] || { echo "run as root (tracepoints, dropping caches)" >&2; exit 1; }
command -v perf >/dev/null || { echo "needs perf (apt-get install linux-perf)" >&2; exit 1; }
perf list 'fuse:*' 2>/dev/null | grep -q fuse_request_send ||
    { echo "this kernel has no fuse:fuse_request_send tracepoint" >&2; exit 1; }
w=$(mktemp -d /var/tmp/evfs-prof-XXXX)
cleanup() { mountpoint -q "$w/mnt" && fusermount3 -u "$w/mnt"; rm -rf "$w"; }
trap cleanup EXIT
if [ -z "$TAR" ]; then
    TAR=$w/sub.tar
    mkdir "$w/src"
    xz -dc /usr/src/linux-source-6.1.tar.xz | tar x -C "$w/src" linux-source-6.1/fs linux-source-6.1/include
    tar cf "$TAR" -C "$w/src" . && rm -rf "$w/src"
fi
entries=$(tar tf "$TAR" | wc -l)
echo pw > "$w/pass"; mkdir "$w/mnt"
"$BIN" init "$w/c" --passfile "$w/pass" >/dev/null
"$BIN" mount "$w/c" "$w/mnt" --passfile "$w/pass" ${MOUNT_ARGS:-}
pid=$(pgrep -f -n "$(basename "$BIN") mount $w/c") || { echo "no daemon found" >&2; exit 1; }
# The tracepoints name a connection by the mount's device number: only this mount's count.
conn=$(stat -c %d "$w/mnt")
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
step() {
    local name=$1; shift
    sync; echo 3 > /proc/sys/vm/drop_caches
    local a b
    a=$(cpu)
    perf record -q -a -e fuse:fuse_request_send -e fuse:fuse_request_end -o "$w/perf.data" -- "$@" >/dev/null
    b=$(cpu)
    echo "## $name: daemon CPU $(( (b - a) * 1000000 / $(getconf CLK_TCK) / entries )) µs per entry ($entries entries)"
    perf script -i "$w/perf.data" 2>/dev/null | python3 -c '
import collections, re, sys
send, lat = {}, collections.defaultdict(list)
for line in sys.stdin:
    m = re.search(r"\s(\d+\.\d+):\s+fuse:fuse_request_(send|end): connection (\d+) req (\d+)(?: opcode \d+ \((\w+)\))?", line)
    if not m or m.group(3) != sys.argv[1]:
        continue
    t, kind, req = float(m.group(1)), m.group(2), m.group(4)
    if kind == "send":
        send[req] = (t, m.group(5))
    elif req in send:
        t0, op = send.pop(req)
        lat[op].append(t - t0)
print("| request | count | total (s) | mean (µs) | median (µs) |\n|---|---|---|---|---|")
for op, v in sorted(lat.items(), key=lambda kv: -sum(kv[1])):
    v.sort()
    print(f"| {op} | {len(v)} | {sum(v):.3f} | {sum(v) / len(v) * 1e6:.1f} | {v[len(v) // 2] * 1e6:.1f} |")
' "$conn"
}
step "unpack" tar xf "$TAR" -C "$w/mnt"
step "ls -lR" ls -lR "$w/mnt"
step "stat every entry" sh -c "find '$w/mnt' -print0 | xargs -0 stat >/dev/null"
"$BIN" umount "$w/mnt"
