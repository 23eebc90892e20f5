#!/usr/bin/env bash
# Cold sequential reads as bench-fio.sh's seq-read-cold row takes them (each round writes a
# fresh file with fio, 1 MiB writes and end_fsync, through every mount, then drops all caches
# before each mount's cold 1 MiB read), for any number of volumes side by side: each SPEC
# names a mount, the format it is made in, the envelopefs binary that makes and mounts it, and
# optionally its extent size and the mount's readahead (KiB, written to its bdi). The order
# of the mounts is reversed every other round. Prints each mount's MiB/s per round and the
# median. Made to compare builds and layouts on issue 17's row, which needs more rounds than
# bench-fio.sh gives it (docs/BENCHMARKS.md).
#
# Usage: sudo scripts/bench-formats.sh [--rounds 7] [--size 512M] NAME:FORMAT:BINARY[:EXTENT[:RA_KB]]...
#   e.g. sudo scripts/bench-formats.sh f1:1:target/release/envelopefs f2:2:target/release/envelopefs
# Needs root (dropping caches). The volumes live under /var/tmp (a real disk). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

ROUNDS=7 SIZE=512M
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        -*) say "unknown argument $1"; exit 2 ;;
        *) break ;;
    esac
done
[ $# -gt 0 ] || { sed -n '2,14p' "$0"; exit 2; }
[ "$(id -u)" -eq 0 ] || { say "run as root (dropping caches needs it)"; exit 1; }
ensure_apt fusermount3 fuse3
ensure_apt fio fio
ensure_apt python3 python3

WORK=$(mktemp -d -p /var/tmp evfs-formats.XXXXXX)
export ENVELOPEFS_RUNTIME_DIR=$WORK/run ENVELOPEFS_STATE_DIR=$WORK/state
NAMES=()
declare -A RESULT
cleanup() {
    for n in "${NAMES[@]}"; do mountpoint -q "$WORK/m-$n" && fusermount3 -u "$WORK/m-$n" || true; done
    steady_memory_end
    rm -rf "$WORK"
}
trap cleanup EXIT
steady_memory
echo "bench passphrase" > "$WORK/pass"
for spec in "$@"; do
    IFS=: read -r name format bin extent ra <<<"$spec"
    [ -x "$bin" ] || { say "$spec: $bin is not an executable"; exit 2; }
    NAMES+=("$name")
    "$bin" init "$WORK/c-$name" --format "$format" ${extent:+--extent-size "$extent"} --passfile "$WORK/pass" >/dev/null
    mkdir "$WORK/m-$name"
    "$bin" mount "$WORK/c-$name" "$WORK/m-$name" --passfile "$WORK/pass"
    [ -z "$ra" ] || echo "$ra" > "/sys/class/bdi/$(mountpoint -d "$WORK/m-$name")/read_ahead_kb"
done

mibs() { python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'; }
for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS"
    order=("${NAMES[@]}")
    [ $((round % 2)) -eq 0 ] && mapfile -t order < <(printf '%s\n' "${NAMES[@]}" | tac)
    for n in "${order[@]}"; do
        rm -f "$WORK/m-$n/seq.dat"
        sync
        fio --name=w --directory="$WORK/m-$n" --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --filename=seq.dat >/dev/null
    done
    for n in "${order[@]}"; do
        sync
        echo 3 > /proc/sys/vm/drop_caches
        RESULT[$n]="${RESULT[$n]:-} $(fio --name=r --directory="$WORK/m-$n" --rw=read --bs=1M --size="$SIZE" \
            --filename=seq.dat --output-format=json | mibs)"
    done
done
for n in "${NAMES[@]}"; do
    # shellcheck disable=SC2086 # the figures are one word each
    median=$(printf '%s\n' ${RESULT[$n]} | sort -n | awk '{a[NR] = $1} END {print a[int((NR + 1) / 2)]}')
    echo "$n: cold MiB/s${RESULT[$n]}; median $median"
done
