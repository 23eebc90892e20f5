#!/usr/bin/env bash
# Making an existing directory a tenant (`tenant add` of a directory that exists) against
# what a user would do instead: make the tenant empty, then `cp -a` the tree in through the
# mount and `rm -rf` the old one (as `mv` across the boundary does). One run, same volume,
# two copies of one tree: FILES files of 1-64 KiB in 30 directories plus 4 files of 16 MiB.
#   sudo scripts/bench-convert.sh [FILES]
# Caches are dropped before each. Needs root, fuse3, python3; not part of CI (no timings in
# tests).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh
FILES=${1:-3000}
[ "$(id -u)" -eq 0 ] || { say "run as root (dropping caches needs it)"; exit 1; }
ensure_rust
ensure_apt fusermount3 fuse3
ensure_apt python3 python3
cargo build --release --locked --quiet
EVFS=$PWD/target/release/envelopefs
W=$(mktemp -d -p /var/tmp evfs-convert.XXXXXX)
export ENVELOPEFS_RUNTIME_DIR=$W/run ENVELOPEFS_STATE_DIR=$W/state
trap 'fusermount3 -u "$W/mnt" 2>/dev/null || true; rm -rf "$W"' EXIT
echo "bench pass" > "$W/pass"; echo "tenant pass" > "$W/tpass"; mkdir "$W/mnt"
"$EVFS" init "$W/c" --passfile "$W/pass" >/dev/null
"$EVFS" mount "$W/c" "$W/mnt" --passfile "$W/pass"
python3 - "$W/mnt" "$FILES" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
for t in ("a", "b"):
    for d in range(30):
        os.makedirs(f"{root}/{t}/d{d}", exist_ok=True)
    for i in range(files):
        with open(f"{root}/{t}/d{i % 30}/f{i}", "wb") as f:
            f.write(os.urandom(1024 + (i * 7919) % (63 * 1024)))
    for i in range(4):
        with open(f"{root}/{t}/big{i}", "wb") as f:
            f.write(os.urandom(16 << 20))
PY
say "tree: $(du -sh "$W/mnt/a" | cut -f1), $FILES files + 4 of 16 MiB"
"$EVFS" umount "$W/mnt"
"$EVFS" tenant add "$W/c" bt --passfile "$W/pass" --tenant-passfile "/bt=$W/tpass" >/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
"$EVFS" mount "$W/c" "$W/mnt" --passfile "$W/pass" --tenant-passfile "/bt=$W/tpass"
s=$(date +%s.%N)
cp -a "$W/mnt/b/." "$W/mnt/bt/" && rm -rf "$W/mnt/b"
"$EVFS" umount "$W/mnt"
copy=$(echo "$(date +%s.%N) - $s" | bc)
sync; echo 3 > /proc/sys/vm/drop_caches
s=$(date +%s.%N)
"$EVFS" tenant add "$W/c" a --passfile "$W/pass" --tenant-passfile "/a=$W/tpass" >/dev/null
conv=$(echo "$(date +%s.%N) - $s" | bc)
echo "tenant add (conversion): ${conv} s; cp -a + rm -rf through the mount, then umount: ${copy} s; ratio $(echo "scale=2; $conv / $copy" | bc)"
