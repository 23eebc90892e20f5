#!/usr/bin/env bash
# Key-path figures at scale, two envelopefs binaries in one run (issue 19):
#   sudo scripts/bench-scale.sh OLD_BINARY NEW_BINARY [DEKS] [ROUNDS]
# One volume with 4 KiB extents and DEKS wrapped DEKs (default 1,000,000: 16 files written
# through a mount, DEKS × 4 KiB of data, so 4 GiB by default, on /var/tmp), made once with
# NEW. Then each round, alternating which binary goes first, each binary times:
#   rotate = `rotate --kek` of the unmounted volume (Argon2 unlock included; every DEK is
#            re-wrapped, so each round has them all to move again),
#   fsck   = `fsck` of it,
#   mount  = `mount` until it serves, then `umount`.
# Prints each round and the medians. Needs fuse3 and root; not part of CI (no timings in tests).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,11p' "$0"; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "run as root (dropping caches needs it)" >&2; exit 1; }
command -v bc >/dev/null || { echo "needs bc" >&2; exit 1; }
OLD=$1; NEW=$2; DEKS=${3:-1000000}; ROUNDS=${4:-3}
FILES=16
w=$(mktemp -d /var/tmp/evfs-scale-XXXX)
out=$w/rounds
cleanup() { mountpoint -q "$w/mnt" && fusermount3 -u "$w/mnt"; rm -rf "$w"; }
trap cleanup EXIT
echo pw > "$w/pass"; mkdir "$w/mnt"
"$NEW" init "$w/c" --passfile "$w/pass" --extent-size 4K >/dev/null
"$NEW" mount "$w/c" "$w/mnt" --passfile "$w/pass"
per=$(( DEKS / FILES ))
for f in $(seq "$FILES"); do
    # Random data: every 4 KiB extent is written, so each has a DEK of its own.
    head -c $(( per * 4096 )) /dev/urandom > "$w/mnt/file-$f"
done
"$NEW" umount "$w/mnt"
echo "volume: $(( per * FILES )) DEKs, $(du -sh "$w/c" | cut -f1) in CIPHERDIR"
t() { local s; s=$(date +%s.%N); "$@" >/dev/null; echo "$(date +%s.%N) - $s" | bc; }
one() {
    local bin=$1 label=$2 rotate fsck mount
    sync; echo 3 > /proc/sys/vm/drop_caches
    rotate=$(t "$bin" rotate "$w/c" --kek --passfile "$w/pass" --quiet)
    fsck=$(t "$bin" fsck "$w/c" --passfile "$w/pass")
    mount=$(t "$bin" mount "$w/c" "$w/mnt" --passfile "$w/pass")
    "$bin" umount "$w/mnt"
    echo "$label rotate=$rotate fsck=$fsck mount=$mount"
}
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then one "$OLD" old; one "$NEW" new; else one "$NEW" new; one "$OLD" old; fi
done | tee "$out"
python3 - "$out" "$(( per * FILES ))" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    label, *kvs = line.split()
    for kv in kvs:
        k, v = kv.split("=")
        d.setdefault((label, k), []).append(float(v))
print(f"{int(sys.argv[2]):,} DEKs:\n| step | old (s) | new (s) | new / old |\n|---|---|---|---|")
for k in ["rotate", "fsck", "mount"]:
    o, n = statistics.median(d[("old", k)]), statistics.median(d[("new", k)])
    print(f"| {k} | {o:.3f} | {n:.3f} | {n / o:.2f} |")
PY
