#!/usr/bin/env bash
# A cold tree read through a mount, comparing envelopefs binaries in one run:
#   sudo scripts/bench-cold.sh TARBALL ROUNDS BINARY[:MOUNT-ARG...]...
# One volume holding TARBALL (unpacked once, by the first binary); then each round, in
# reverse order every other round, each binary mounts it afresh (caches dropped before each
# step): `find` right after the mount (file ids not known yet), `find` again (known), `ls
# -lR`, md5sum of every file (find | xargs md5sum, as scripts/bench-real.sh), unmount.
# Prints each run and the medians (seconds). The figures of BENCHMARKS.md "session 4" for
# the size cache, the listing's read-ahead, the store's sweep and open-ahead come from these
# steps (TARBALL: the decompressed linux-source-6.1 tarball). Needs root and fuse3; not CI.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,10p' "$0"; exit 2; }
TAR=$(realpath "$1"); ROUNDS=$2; shift 2
[ "$(id -u)" -eq 0 ] || { echo "run as root (dropping caches needs it)" >&2; exit 1; }
command -v bc >/dev/null || { echo "needs bc" >&2; exit 1; }
out=$(mktemp) w=$(mktemp -d /var/tmp/evfs-cold-XXXX)
source "$(dirname "$0")/lib/setup.sh"
cleanup() { mountpoint -q "$w/mnt" && fusermount3 -u "$w/mnt"; steady_memory_end; rm -rf "$w" "$out"; }
trap cleanup EXIT
steady_memory
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
echo pw > "$w/pass"; mkdir "$w/mnt"
IFS=: read -r -a first <<< "$1"
"${first[0]}" init "$w/c" --passfile "$w/pass" >/dev/null
"${first[0]}" mount "$w/c" "$w/mnt" --passfile "$w/pass" "${first[@]:1}"
tar xf "$TAR" -C "$w/mnt"
"${first[0]}" umount "$w/mnt"
for r in $(seq "$ROUNDS"); do
    bins=("$@")
    [ $((r % 2)) = 0 ] && mapfile -t bins < <(printf '%s\n' "$@" | tac)
    for b in "${bins[@]}"; do
        IFS=: read -r -a argv <<< "$b"
        "${argv[0]}" mount "$w/c" "$w/mnt" --passfile "$w/pass" "${argv[@]:1}"
        drop; fresh=$(t find "$w/mnt")
        drop; known=$(t find "$w/mnt")
        drop; ls=$(t ls -lR "$w/mnt")
        drop; md5=$(t sh -c "cd '$w/mnt' && find . -type f -print0 | xargs -0 md5sum")
        "${argv[0]}" umount "$w/mnt"
        echo "$b find-fresh=$fresh find=$known ls-lR=$ls md5sum=$md5" | tee -a "$out"
    done
done
echo "medians:"
for b in "$@"; do
    awk -v b="$b" '$1 == b' "$out" | python3 -c '
import statistics, sys
runs = [dict(kv.split("=") for kv in l.split()[1:]) for l in sys.stdin]
print(sys.argv[1], " ".join("%s=%.3f" % (k, statistics.median(float(r[k]) for r in runs)) for k in runs[0]))
' "$b"
done
