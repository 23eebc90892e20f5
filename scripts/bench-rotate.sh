#!/usr/bin/env bash
# `rotate --kek` on a large tree, comparing two envelopefs binaries in one run:
#   sudo scripts/bench-rotate.sh OLD_BINARY NEW_BINARY [FILES] [ROUNDS]
# Each round, alternating which goes first, each binary: a fresh volume with FILES files of
# 4 KiB in FILES/100 directories (made through its mount), then
#   offline  = `rotate --kek` of the unmounted volume (wall time),
#   mounted  = `rotate --kek` of the mounted volume (wall time), while a reader lists
#              directories of the mount in a loop (a readdir always reaches the daemon),
#   wait     = the longest one of those listings took (how long the mount was quiet).
# Prints each round and the medians. Needs fuse3 (and python3); not part of CI (no timings in
# tests).
set -euo pipefail
OLD=$1; NEW=$2; FILES=${3:-20000}; ROUNDS=${4:-3}
DIRS=$(( (FILES + 99) / 100 ))
round() {
    local bin=$1 label=$2 w
    w=$(mktemp -d /var/tmp/evfs-rot-XXXX)
    echo pw > "$w/pass"; mkdir "$w/mnt"
    "$bin" init "$w/c" --passfile "$w/pass" >/dev/null
    "$bin" mount "$w/c" "$w/mnt" --passfile "$w/pass"
    python3 - "$w/mnt" "$FILES" "$DIRS" <<'PY'
import os, sys
root, files, dirs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for d in range(dirs):
    os.mkdir(f"{root}/dir-{d:04}")
for f in range(files):
    with open(f"{root}/dir-{f % dirs:04}/a-rather-ordinary-file-name-{f:06}.txt", "wb") as h:
        h.write(os.urandom(4096))
PY
    "$bin" umount "$w/mnt"
    t() { local s; s=$(date +%s.%N); "$@" >/dev/null 2>&1; echo "$(date +%s.%N) - $s" | bc; }
    local offline mounted wait
    offline=$(t "$bin" rotate "$w/c" --kek --passfile "$w/pass")
    "$bin" mount "$w/c" "$w/mnt" --passfile "$w/pass"
    python3 - "$w/mnt" "$DIRS" "$w/stop" > "$w/wait" <<'PY' &
import os, sys, time
root, dirs, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3]
worst, i = 0.0, 0
while not os.path.exists(stop):
    s = time.monotonic()
    os.listdir(f"{root}/dir-{i % dirs:04}")
    worst = max(worst, time.monotonic() - s)
    i += 1
    time.sleep(0.001)
print(f"{worst:.3f}")
PY
    local reader=$!
    sleep 0.5
    mounted=$(t "$bin" rotate "$w/c" --kek)
    touch "$w/stop"; wait "$reader"; wait=$(cat "$w/wait")
    "$bin" umount "$w/mnt"; rm -rf "$w"
    echo "$label offline=$offline mounted=$mounted wait=$wait"
}
out=$(mktemp)
for r in $(seq "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then round "$OLD" old; round "$NEW" new; else round "$NEW" new; round "$OLD" old; fi
done | tee "$out"
python3 - "$out" "$FILES" <<'PY'
import statistics, sys
d = {}
for line in open(sys.argv[1]):
    label, *kvs = line.split()
    for kv in kvs:
        k, v = kv.split("=")
        d.setdefault((label, k), []).append(float(v))
print(f"{sys.argv[2]} files:\n| step | old (s) | new (s) | new / old |\n|---|---|---|---|")
for k in ["offline", "mounted", "wait"]:
    o, n = statistics.median(d[("old", k)]), statistics.median(d[("new", k)])
    print(f"| {k} | {o:.3f} | {n:.3f} | {n / o:.2f} |")
PY
