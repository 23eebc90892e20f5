#!/usr/bin/env bash
# Entry creation through a mount, two envelopefs binaries in one run:
#   scripts/bench-create.sh OLD_BINARY NEW_BINARY [ROUNDS]
# Each round, alternating which goes first, on a fresh volume whose CIPHERDIR is on tmpfs
# (/dev/shm: the daemon's work, not the disk's): one Python process makes 1,000 directories,
# each with a FIFO and 3 symlinks, and the time it took is printed. Needs fuse3 (root for
# the daemon to mount by itself); not part of CI (no timings in tests).
set -euo pipefail
OLD=$1; NEW=$2; ROUNDS=${3:-5}
round() {
    local bin=$1 label=$2 w t
    w=$(mktemp -d /dev/shm/evfs-create-XXXX)
    echo pw > "$w/pass"; mkdir "$w/mnt"
    "$bin" init "$w/c" --passfile "$w/pass" >/dev/null
    "$bin" mount "$w/c" "$w/mnt" --passfile "$w/pass"
    t=$(python3 - "$w/mnt" <<'PY'
import os, sys, time
m = sys.argv[1]
t = time.perf_counter()
for i in range(1000):
    d = os.path.join(m, f"d{i}")
    os.mkdir(d)
    os.mkfifo(os.path.join(d, "p"))
    for j in range(3):
        os.symlink(f"target-{i}-{j}", os.path.join(d, f"s{j}"))
print(f"{time.perf_counter() - t:.3f}")
PY
)
    "$bin" umount "$w/mnt"
    rm -rf "$w"
    echo "round $3 $label: $t s"
}
for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then round "$OLD" old "$r"; round "$NEW" new "$r"; else round "$NEW" new "$r"; round "$OLD" old "$r"; fi
done
