#!/usr/bin/env bash
# A real tree unpacked, listed and removed, comparing envelopefs binaries in one run:
#   sudo scripts/bench-untar.sh TARBALL ROUNDS BINARY[:MOUNT-ARG...]...
# Each round, in reverse order every other round, each binary on a fresh volume (caches
# dropped before each step): `tar xf TARBALL` + sync, `ls -lR`, `cat` of every file,
# `rm -rf` + sync. Prints each run and the medians (seconds). A binary may carry mount
# arguments after colons: `target/release/envelopefs:--io-uring` against
# `target/release/envelopefs` compares the two transports. A smaller, quicker companion of bench-real.sh for A/B runs
# of one change (scripts/profile-meta.sh makes the usual TARBALL: the fs/ and include/
# subtrees of linux-source-6.1). Needs root and fuse3; not part of CI.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,8p' "$0"; exit 2; }
TAR=$(realpath "$1"); ROUNDS=$2; shift 2
[ "$(id -u)" -eq 0 ] || { echo "run as root (dropping caches needs it)" >&2; exit 1; }
command -v bc >/dev/null || { echo "needs bc" >&2; exit 1; }
source "$(dirname "$0")/lib/setup.sh"
out=$(mktemp) w=
cleanup() {
    if [ -n "$w" ]; then mountpoint -q "$w/mnt" && fusermount3 -u "$w/mnt"; rm -rf "$w"; fi
    steady_memory_end
    rm -f "$out"
}
trap cleanup EXIT
steady_memory
drop() { sync; echo 3 > /proc/sys/vm/drop_caches; }
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; sync; echo "$(date +%s.%N) - $s" | bc; }
for r in $(seq "$ROUNDS"); do
    bins=("$@")
    [ $((r % 2)) = 0 ] && mapfile -t bins < <(printf '%s\n' "$@" | tac)
    for b in "${bins[@]}"; do
        IFS=: read -r -a argv <<< "$b"
        w=$(mktemp -d /var/tmp/evfs-untar-XXXX)
        echo pw > "$w/pass"; mkdir "$w/mnt"
        "${argv[0]}" init "$w/c" --passfile "$w/pass" >/dev/null
        "${argv[0]}" mount "$w/c" "$w/mnt" --passfile "$w/pass" "${argv[@]:1}"
        drop; untar=$(t tar xf "$TAR" -C "$w/mnt")
        drop; ls=$(t ls -lR "$w/mnt") # (t's sync finds nothing to write here)
        drop; cat=$(t sh -c "find '$w/mnt' -type f -print0 | xargs -0 cat")
        drop; rm=$(t rm -rf "${w:?}/mnt/"*)
        "${argv[0]}" umount "$w/mnt"; rm -rf "$w"; w=
        echo "$b untar=$untar ls-lR=$ls cat=$cat rm=$rm" | tee -a "$out"
    done
done # (not piped: in a subshell, `w` would be out of the cleanup's sight)
python3 - "$out" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    b, *kvs = line.split()
    for kv in kvs:
        k, v = kv.split("=")
        d.setdefault(b, {}).setdefault(k, []).append(float(v))
steps = ["untar", "ls-lR", "cat", "rm"]
print("| binary | " + " | ".join(steps) + " |\n|---|" + "---|" * len(steps))
for b, v in d.items():
    print(f"| {b} | " + " | ".join(f"{statistics.median(v[s]):.3f}" for s in steps) + " |")
PY
