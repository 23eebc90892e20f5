#!/usr/bin/env bash
# Metadata workload on a fresh volume, comparing two envelopefs binaries in one run:
#   sudo scripts/bench-meta.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Each round, alternating which goes first: create 5,000 100-byte files in 50 directories,
# drop caches, then find, ls -lR, cat every file, rename every file, rm -rf. Prints each round
# and the medians.
# Needs root (drop_caches) and fuse3; not part of CI (no timings in tests).
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-3}
round() {
    local bin=$1 label=$2 w
    w=$(mktemp -d /var/tmp/evfs-meta-XXXX)
    echo pw > "$w/pass"; mkdir "$w/mnt"
    "$bin" init "$w/c" --passfile "$w/pass" >/dev/null
    "$bin" mount "$w/c" "$w/mnt" --passfile "$w/pass"
    t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
    local create find ls cat mv rm
    create=$(t python3 -c "
import os, sys
for d in range(50):
    os.mkdir(f'{sys.argv[1]}/d{d}')
    for f in range(100):
        with open(f'{sys.argv[1]}/d{d}/file-{f}.txt', 'w') as h: h.write('x' * 100)
" "$w/mnt")
    sync; echo 3 > /proc/sys/vm/drop_caches
    find=$(t find "$w/mnt")
    ls=$(t ls -lR "$w/mnt")
    cat=$(t sh -c "cat $w/mnt/d*/* > /dev/null")
    mv=$(t python3 -c "
import os, sys
for d in range(50):
    for f in range(100):
        os.rename(f'{sys.argv[1]}/d{d}/file-{f}.txt', f'{sys.argv[1]}/d{d}/moved-{f}.txt')
" "$w/mnt")
    rm=$(t sh -c "rm -rf $w/mnt/d*")
    "$bin" umount "$w/mnt"; rm -rf "$w"
    echo "$label create=$create find=$find ls=$ls cat=$cat mv=$mv rm=$rm"
}
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then round "$OLD" old; round "$NEW" new; else round "$NEW" new; round "$OLD" old; fi
done | tee "$out"
python3 - "$out" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    label, *kvs = line.split()
    for kv in kvs:
        k, v = kv.split("=")
        d.setdefault((label, k), []).append(float(v))
print("| step | old (s) | new (s) | new / old |\n|---|---|---|---|")
for k in ["create", "find", "ls", "cat", "mv", "rm"]:
    o, n = statistics.median(d[("old", k)]), statistics.median(d[("new", k)])
    print(f"| {k} | {o:.3f} | {n:.3f} | {n / o:.2f} |")
PY
