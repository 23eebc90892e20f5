#!/usr/bin/env bash
# Benchmarks the mounted file system side by side, in one run and interleaved (each job on
# every file system before the next job): plain ext4 (or whatever the work directory is on),
# gocryptfs, and envelopefs with both ciphers (GCM-SIV in format 2, its default, and in format
# 1, to show what format 2's crash-atomic, rollback-evident blocks cost).
#
# Jobs: sequential 1 MiB write (end_fsync) and read (cold: all caches dropped; warm: only the
# mount's page cache dropped, the backing file cached; again: read once more by a new open,
# whatever the file system kept cached from the warm read), 4 KiB random read and write with
# O_DIRECT at 1 and 4 jobs, and a small-file job (extract a tarball of ~25,000 files, `find |
# wc -l`, `rm -rf`). Every job runs --rounds times (default 2), the file systems in turn,
# in reverse order every other round, so that none always goes first after the disk's
# quiet spell or last behind the others' writeback. Prints a markdown table of the medians
# with each figure's ratio to gocryptfs, the daemons' CPU seconds and peak RSS, and
# envelopefs's KMS calls.
#
# Usage: scripts/bench-fio.sh [--size 1G] [--runtime 10] [--files 25000] [--dir DIR]
#                              [--rounds 2] [--only seq,rand,small] [--io-uring]
# Needs root (to drop caches). DIR (default /var/tmp) must be on a real disk, not tmpfs.
# --only runs some job groups (for a quick comparison while working; quote full runs).
# --io-uring adds evfs-uring: GCM-SIV format 2 mounted with --io-uring (the kernel's
# enable_uring is switched on for the run and put back).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

SIZE=1G RUNTIME=10 FILES=25000 BASE=/var/tmp ONLY=seq,rand,small ROUNDS=2 URING=
while [ $# -gt 0 ]; do
    case $1 in
        --size) SIZE=$2; shift 2 ;;
        --runtime) RUNTIME=$2; shift 2 ;;
        --files) FILES=$2; shift 2 ;;
        --dir) BASE=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --io-uring) URING=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) say "unknown argument $1"; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { say "run as root (dropping caches needs it)"; exit 1; }
wanted() { [[ ",$ONLY," == *",$1,"* ]]; }

ensure_rust
ensure_apt fusermount3 fuse3
ensure_apt fio fio
ensure_apt gocryptfs gocryptfs
ensure_apt python3 python3
say "cargo build --release"
cargo build --release --locked --quiet
EVFS=$PWD/target/release/envelopefs

WORK=$(mktemp -d -p "$BASE" evfs-bench.XXXXXX)
export ENVELOPEFS_RUNTIME_DIR=$WORK/run
URING_KNOB=/sys/module/fuse/parameters/enable_uring
URING_WAS=$(cat "$URING_KNOB" 2>/dev/null || true)
cleanup() {
    for m in "$WORK"/mnt-*; do
        mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null || true
    done
    [ -z "$URING_WAS" ] || echo "$URING_WAS" > "$URING_KNOB" || true
    steady_memory_end
    rm -rf "$WORK"
}
trap cleanup EXIT
steady_memory
echo "bench passphrase" > "$WORK/pass"

# The file systems: name, directory to benchmark in, daemon pid (none for ext4).
NAMES=(ext4 gocryptfs evfs-gcm-siv evfs-gcm-siv-f1 evfs-xts)
# in_turn ROUND: the file systems in the order of that round (reversed every other round).
in_turn() {
    if [ $(($1 % 2)) -eq 1 ]; then printf '%s\n' "${NAMES[@]}"; else printf '%s\n' "${NAMES[@]}" | tac; fi
}
declare -A DIR PID
mkdir -p "$WORK/plain"
DIR[ext4]=$WORK/plain
mkdir -p "$WORK/gcipher" "$WORK/mnt-gocryptfs"
gocryptfs -q -init -extpass "cat $WORK/pass" "$WORK/gcipher" >/dev/null
gocryptfs -q -nosyslog -extpass "cat $WORK/pass" "$WORK/gcipher" "$WORK/mnt-gocryptfs"
DIR[gocryptfs]=$WORK/mnt-gocryptfs
PID[gocryptfs]=$(pgrep -n -f "gocryptfs.*$WORK/gcipher")
EVFS_KINDS=(gcm-siv gcm-siv-f1 xts)
if [ -n "$URING" ]; then
    [ -n "$URING_WAS" ] || { say "--io-uring: this kernel has no FUSE over io_uring ($URING_KNOB)"; exit 1; }
    echo Y > "$URING_KNOB"
    EVFS_KINDS+=(uring)
    NAMES+=(evfs-uring)
fi
for c in "${EVFS_KINDS[@]}"; do
    mkdir -p "$WORK/mnt-evfs-$c"
    format=() cipher=aes-256-${c%-f1} extra=()
    [ "$c" = gcm-siv-f1 ] && format=(--format 1)
    [ "$c" = uring ] && cipher=aes-256-gcm-siv extra=(--io-uring)
    "$EVFS" init "$WORK/cipher-$c" --cipher "$cipher" "${format[@]}" --passfile "$WORK/pass" >/dev/null
    "$EVFS" mount "$WORK/cipher-$c" "$WORK/mnt-evfs-$c" --passfile "$WORK/pass" "${extra[@]}"
    DIR[evfs-$c]=$WORK/mnt-evfs-$c
    PID[evfs-$c]=$("$EVFS" status "$WORK/mnt-evfs-$c" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
done

cpu_ticks() { # utime+stime of a pid, in clock ticks
    [ -n "${1:-}" ] && awk '{print $14+$15}' "/proc/$1/stat" || echo 0
}
declare -A CPU
for n in "${NAMES[@]}"; do CPU[$n]=0; done
RESULTS=$WORK/results.tsv
: > "$RESULTS"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$RESULTS"; } # job fs value unit

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
# warm FILE: reads FILE (if it exists) so that it is in the page cache. A job that means to
# measure a file system with its data cached says so: a proactive reclaimer (this machine's
# DAMON pages out whatever page cache went 60 s unused) would otherwise have evicted some of
# it, more for the file systems whose turn came last, and the job would measure the disk.
warm() { [ -e "$1" ] && cat "$1" >/dev/null || true; }

# fio_job NAME FS ARGS...: runs fio in FS's directory, records MiB/s or IOPS.
fio_job() {
    local job=$1 fs=$2; shift 2
    local before; before=$(cpu_ticks "${PID[$fs]:-}")
    local out; out=$(fio --name="$job" --directory="${DIR[$fs]}" --output-format=json --group_reporting "$@")
    CPU[$fs]=$(( ${CPU[$fs]} + $(cpu_ticks "${PID[$fs]:-}") - before ))
    echo "$out" | python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
kind = sys.argv[1]
side = j["write"] if "write" in kind else j["read"]
if "rand" in kind:
    print("%.0f\tIOPS" % side["iops"])
else:
    print("%.0f\tMiB/s" % (side["bw"] / 1024))
' "$job" | while IFS=$'\t' read -r v u; do record "$job" "$fs" "$v" "$u"; done
}

# timed JOB FS CMD...: records the wall time of CMD (run in FS's directory) in seconds.
timed() {
    local job=$1 fs=$2; shift 2
    local before; before=$(cpu_ticks "${PID[$fs]:-}")
    local t0 t1; t0=$(date +%s.%N)
    (cd "${DIR[$fs]}" && "$@") >/dev/null
    t1=$(date +%s.%N)
    CPU[$fs]=$(( ${CPU[$fs]} + $(cpu_ticks "${PID[$fs]:-}") - before ))
    record "$job" "$fs" "$(python3 -c "print('%.2f' % ($t1 - $t0))")" s
}

if wanted seq; then
for round in $(seq "$ROUNDS"); do
say "sequential write and read ($SIZE), round $round of $ROUNDS"
for fs in $(in_turn "$round"); do
    rm -f "${DIR[$fs]}/seq.dat"
    sync
    fio_job seq-write "$fs" --rw=write --bs=1M --size="$SIZE" --end_fsync=1 --filename=seq.dat
done
for fs in $(in_turn "$round"); do
    drop_caches
    fio_job seq-read-cold "$fs" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat
done
for fs in $(in_turn "$round"); do
    # Warm: the backing file is in the page cache; fio's invalidate (fadvise DONTNEED) drops
    # only the mount's own cache of it. On ext4 that is the only cache, so keep it there.
    warm "${DIR[$fs]}/seq.dat"
    inv=1; [ "$fs" = ext4 ] && inv=0
    fio_job seq-read-warm "$fs" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat --invalidate=$inv
done
for fs in $(in_turn "$round"); do
    fio_job seq-read-again "$fs" --rw=read --bs=1M --size="$SIZE" --filename=seq.dat --invalidate=0
done
done
fi

if wanted rand; then
for round in $(seq "$ROUNDS"); do
say "4 KiB random I/O, O_DIRECT, ${RUNTIME}s each, round $round of $ROUNDS"
for rw in randread randwrite; do
    for jobs in 1 4; do
        for fs in $(in_turn "$round"); do
            warm "${DIR[$fs]}/rand.dat"
            fio_job "$rw-4k-${jobs}j" "$fs" --rw=$rw --bs=4k --direct=1 --ioengine=psync --numjobs=$jobs \
                --size=256M --filename=rand.dat --runtime="$RUNTIME" --time_based
        done
    done
done
done
fi
for fs in "${NAMES[@]}"; do rm -f "${DIR[$fs]}/seq.dat" "${DIR[$fs]}/rand.dat"; done

if wanted small; then
say "small files: a tarball of $FILES files"
python3 - "$WORK/small.tar" "$FILES" <<'EOF'
import io, random, sys, tarfile
path, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(20261122)
with tarfile.open(path, "w") as t:
    for i in range(n):
        d = "d%03d/e%02d" % (i % 250, (i // 250) % 20)
        size = min(int(rng.lognormvariate(8, 1.5)), 1 << 20)  # median ~3 KiB, like source trees
        data = rng.randbytes(size)
        info = tarfile.TarInfo("%s/f%05d.txt" % (d, i))
        info.size = size
        t.addfile(info, io.BytesIO(data))
EOF
# settle: before another extract, waits until envelopefs has freed what the last rm moved to
# its trash (CIPHERDIR/trash/ is empty), then 65 s more. ext4 without a journal
# (as here) skips every inode freed in the last 60 s when it allocates one, so an extract
# right after an rm pays for that rm: plain ext4 took 0.97 s in a first round and 9.64 s in
# a second one that followed at once.
settle() {
    for c in "${EVFS_KINDS[@]}"; do
        for _ in $(seq 600); do [ -z "$(ls -A "$WORK/cipher-$c/trash" 2>/dev/null)" ] && break; sleep 0.5; done
    done
    say "waiting 65 s for ext4's recently freed inodes to age"
    sleep 65
}
for round in $(seq "$ROUNDS"); do
    say "small files, round $round of $ROUNDS"
    [ "$round" -gt 1 ] && settle
    for fs in $(in_turn "$round"); do
        sync
        warm "$WORK/small.tar"
        timed small-extract "$fs" sh -c "tar -xf '$WORK/small.tar' && sync"
    done
    for fs in $(in_turn "$round"); do timed small-find "$fs" sh -c 'find . | wc -l'; done
    for fs in $(in_turn "$round"); do timed small-rm "$fs" sh -c 'rm -rf ./d* && sync'; done
done
fi

# The report.
hz=$(getconf CLK_TCK)
for fs in "${NAMES[@]}"; do
    [ -n "${PID[$fs]:-}" ] && record daemon-cpu "$fs" "$(python3 -c "print('%.1f' % (${CPU[$fs]} / $hz))")" "CPU s"
    [ -n "${PID[$fs]:-}" ] && record daemon-peak-rss "$fs" \
        "$(awk '/VmHWM/ {printf "%.0f", $2/1024}' "/proc/${PID[$fs]}/status")" MiB
done
kms=$("$EVFS" status "${DIR[evfs-gcm-siv]}" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["kms_calls"])')

python3 - "$RESULTS" "$ROUNDS" <<'EOF'
import statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    job, fs, v, unit = line.rstrip("\n").split("\t")
    if job not in rows:
        rows[job] = {"unit": unit}
        order.append(job)
    rows[job].setdefault(fs, []).append(float(v))
raw = {job: {fs: list(vs) for fs, vs in r.items() if fs != "unit"} for job, r in rows.items()}
for r in rows.values():
    for fs, vs in r.items():
        if fs != "unit":
            r[fs] = statistics.median(vs)
fss = ["ext4", "gocryptfs", "evfs-gcm-siv", "evfs-gcm-siv-f1", "evfs-xts"]
uring = any("evfs-uring" in r for r in rows.values())
if uring:
    fss.append("evfs-uring")
print("| job | unit | " + " | ".join(fss) + " | gcm-siv / gocryptfs | gcm-siv f2 / f1 | xts / gocryptfs |"
      + (" uring / gocryptfs |" if uring else ""))
print("|---|---|" + "---|" * len(fss) + "---|---|---|" + ("---|" if uring else ""))
for job in order:
    r = rows[job]
    cells = [("%g" % r[f]) if f in r else "–" for f in fss]
    ratio = lambda a, b: "%.2f×" % (r[a] / r[b]) if r.get(b) and a in r else "–"
    ratios = [ratio("evfs-gcm-siv", "gocryptfs"), ratio("evfs-gcm-siv", "evfs-gcm-siv-f1"), ratio("evfs-xts", "gocryptfs")]
    if uring:
        ratios.append(ratio("evfs-uring", "gocryptfs"))
    print("| %s | %s | %s | %s |" % (job, r["unit"], " | ".join(cells), " | ".join(ratios)))
print()
print("Medians of %s rounds. Ratios: higher is better for MiB/s and IOPS, lower for s, CPU s" % sys.argv[2])
print("and MiB. gcm-siv is format 2 (the default), gcm-siv-f1 format 1.")
print()
print("Each round's figures (in the order the rounds ran):")
print()
for job in order:
    if job.startswith("daemon-"):
        continue
    cells = ["%s %s" % (f, " / ".join("%g" % v for v in raw[job][f])) for f in fss if f in raw[job]]
    print("* %s: %s" % (job, "; ".join(cells)))
EOF
echo
echo "envelopefs (gcm-siv) KMS calls for the whole run: $kms"
echo "versions: $("$EVFS" --version); $(gocryptfs --version | head -1); $(fio --version); kernel $(uname -r)"
