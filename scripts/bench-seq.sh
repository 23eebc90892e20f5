#!/usr/bin/env bash
# Sequential reads, format 2 against format 1, on two mounts side by side (release build):
# each round drops all caches and reads a file cold with fio, then warms the backing file
# through the mount and reads it again with the mount's own cache dropped (fio --invalidate),
# alternating which format goes first; prints MiB/s and the daemon's CPU ticks per read.
# With --trace it also counts the page-cache folios the backing data file is read into, by
# order (tracepoint filemap:mm_filemap_add_to_page_cache, needs perf): what the per-folio
# cost of the backing page cache depends on (docs/BENCHMARKS.md, issue 17).
#
# Usage: sudo scripts/bench-seq.sh [--rounds N] [--size SIZE] [--extent-size SIZE] [--trace]
# Needs root (dropping caches). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

ROUNDS=4 SIZE=512M EXTENT=1M TRACE=0
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --size) SIZE=$2; shift 2 ;;
        --extent-size) EXTENT=$2; shift 2 ;;
        --trace) TRACE=1; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) say "unknown argument $1"; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { say "run as root (dropping caches needs it)"; exit 1; }
ensure_rust
ensure_apt fusermount3 fuse3
ensure_apt fio fio
ensure_apt python3 python3
[ "$TRACE" = 1 ] && ensure_apt perf linux-perf
cargo build --release --locked --quiet
EVFS=$PWD/target/release/envelopefs

WORK=$(mktemp -d -p /var/tmp evfs-seq.XXXXXX)
export ENVELOPEFS_RUNTIME_DIR=$WORK/run ENVELOPEFS_STATE_DIR=$WORK/state
cleanup() {
    for f in 1 2; do mountpoint -q "$WORK/m$f" 2>/dev/null && fusermount3 -u "$WORK/m$f" || true; done
    steady_memory_end
    rm -rf "$WORK"
}
trap cleanup EXIT
steady_memory
echo "bench passphrase" > "$WORK/pass"
declare -A PID
for f in 1 2; do
    "$EVFS" init "$WORK/c$f" --format "$f" --extent-size "$EXTENT" --passfile "$WORK/pass" >/dev/null
    mkdir "$WORK/m$f"
    "$EVFS" mount "$WORK/c$f" "$WORK/m$f" --passfile "$WORK/pass"
    PID[$f]=$("$EVFS" status "$WORK/m$f" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
    fio --name=w --directory="$WORK/m$f" --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --filename=seq.dat >/dev/null
done

ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
mibs() { python3 -c 'import json,sys; print("%.0f" % (json.load(sys.stdin)["jobs"][0]["read"]["bw"] / 1024))'; }
read_job() { fio --name=r --directory="$WORK/m$1" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat --output-format=json "${@:2}" | mibs; }

for r in $(seq "$ROUNDS"); do
    order="1 2"; [ $((r % 2)) = 0 ] && order="2 1"
    for f in $order; do
        drop_caches
        t0=$(ticks "${PID[$f]}"); cold=$(read_job "$f"); t1=$(ticks "${PID[$f]}")
        cat "$WORK/m$f/seq.dat" >/dev/null
        t2=$(ticks "${PID[$f]}"); warm=$(read_job "$f" --invalidate=1); t3=$(ticks "${PID[$f]}")
        echo "round $r format $f: cold $cold MiB/s ($((t1 - t0)) ticks), warm $warm MiB/s ($((t3 - t2)) ticks)"
    done
done

if [ "$TRACE" = 1 ]; then
    for f in 1 2; do
        drop_caches
        # The backing data file's device; the mount's own cache (a fuse device) is left out.
        dev=$(stat -c '%Hd:%Ld' "$WORK/c$f")
        perf record -q -e filemap:mm_filemap_add_to_page_cache -a -o "$WORK/trace$f" -- cat "$WORK/m$f/seq.dat" >/dev/null 2>&1
        echo "format $f: backing folios read in, by order (count):"
        perf script -i "$WORK/trace$f" 2>/dev/null | grep "dev $dev " | grep -o 'order=[0-9]*' | sort -t= -k2 -n | uniq -c
    done
fi
