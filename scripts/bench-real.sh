#!/usr/bin/env bash
# A real workload on plain ext4 (or whatever the work directory is on), gocryptfs and
# envelopefs (format 2, its default; and a second mount with --io-uring where the kernel has
# FUSE over io_uring: its enable_uring is switched on for the run and put back), in one run,
# interleaved (each step on every file
# system before the next step, in reverse order every other round), caches dropped before
# each step: unpack the Linux source tree that Debian ships (linux-source-6.1, ~80k
# entries; decompressed once beforehand, so the steps measure the file systems, not xz),
# `find`, `ls -lR`, md5sum of every file, `git init/add/commit` of its fs/ subtree and
# `git status` there, a SQLite workload (20,000 rows in 20 transactions, an index, a
# query), `rm -rf`. Prints a markdown table of the medians (seconds) with envelopefs's
# ratios to gocryptfs and to ext4.
#   sudo scripts/bench-real.sh [--rounds 1] [--dir /var/tmp] [--baseline BINARY]
# --baseline adds a column for another envelopefs binary (an earlier build, mounted as the
# --io-uring column is, where there is one), so a change is measured before and after in
# one run. Needs root (drops caches). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh
ROUNDS=1 BASE=/var/tmp BASELINE=
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) ROUNDS=$2; shift 2 ;;
        --dir) BASE=$2; shift 2 ;;
        --baseline) BASELINE=$(realpath "$2"); shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) say "unknown argument $1"; exit 2 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { say "run as root (dropping caches needs it)"; exit 1; }
ensure_rust
ensure_apt fusermount3 fuse3
ensure_apt gocryptfs gocryptfs
ensure_apt sqlite3 sqlite3
ensure_apt git git
ensure_apt xz xz-utils
[ -e /usr/src/linux-source-6.1.tar.xz ] || ensure_apt_pkg linux-source-6.1
cargo build --release --locked --quiet
EVFS=$PWD/target/release/envelopefs

WORK=$(mktemp -d -p "$BASE" evfs-real.XXXXXX)
export ENVELOPEFS_RUNTIME_DIR=$WORK/run ENVELOPEFS_STATE_DIR=$WORK/state
URING_KNOB=/sys/module/fuse/parameters/enable_uring
URING_WAS=$(cat "$URING_KNOB" 2>/dev/null || true)
cleanup() {
    # envelopefs's umount waits for its daemon to commit and exit (it writes the volume's
    # anchor last: removed under it, the work directory would not go).
    for m in "$WORK"/mnt-envelopefs "$WORK"/mnt-uring; do
        mountpoint -q "$m" 2>/dev/null && "$EVFS" umount "$m" >/dev/null 2>&1 || true
    done
    m=$WORK/mnt-baseline
    mountpoint -q "$m" 2>/dev/null && "$BASELINE" umount "$m" >/dev/null 2>&1 || true
    for m in "$WORK"/mnt-*; do mountpoint -q "$m" 2>/dev/null && fusermount3 -u "$m" 2>/dev/null || true; done
    [ -z "$URING_WAS" ] || echo "$URING_WAS" > "$URING_KNOB" || true
    steady_memory_end
    rm -rf "$WORK"
}
trap cleanup EXIT
steady_memory
echo "bench passphrase" > "$WORK/pass"
say "decompressing the Linux source tarball once"
xz -dc /usr/src/linux-source-6.1.tar.xz > "$WORK/linux.tar"

NAMES=(ext4 gocryptfs envelopefs)
declare -A DIR
mkdir -p "$WORK/plain" "$WORK/gcipher" "$WORK/mnt-gocryptfs" "$WORK/mnt-envelopefs"
DIR[ext4]=$WORK/plain
gocryptfs -q -init -extpass "cat $WORK/pass" "$WORK/gcipher" >/dev/null
gocryptfs -q -nosyslog -extpass "cat $WORK/pass" "$WORK/gcipher" "$WORK/mnt-gocryptfs"
DIR[gocryptfs]=$WORK/mnt-gocryptfs
"$EVFS" init "$WORK/cipher" --passfile "$WORK/pass" >/dev/null
"$EVFS" mount "$WORK/cipher" "$WORK/mnt-envelopefs" --passfile "$WORK/pass"
DIR[envelopefs]=$WORK/mnt-envelopefs
if [ -n "$URING_WAS" ]; then
    echo Y > "$URING_KNOB"
    mkdir -p "$WORK/mnt-uring"
    "$EVFS" init "$WORK/cipher-uring" --passfile "$WORK/pass" >/dev/null
    "$EVFS" mount "$WORK/cipher-uring" "$WORK/mnt-uring" --passfile "$WORK/pass" --io-uring
    "$EVFS" status "$WORK/mnt-uring" --json | python3 -c 'import json, sys; sys.exit(json.load(sys.stdin)["transport"]["kind"] != "io_uring")' || { say "--io-uring did not take"; exit 1; }
    DIR[uring]=$WORK/mnt-uring
    NAMES+=(uring)
fi
if [ -n "$BASELINE" ]; then
    mkdir -p "$WORK/mnt-baseline"
    "$BASELINE" init "$WORK/cipher-baseline" --passfile "$WORK/pass" >/dev/null
    "$BASELINE" mount "$WORK/cipher-baseline" "$WORK/mnt-baseline" --passfile "$WORK/pass" ${URING_WAS:+--io-uring}
    DIR[baseline]=$WORK/mnt-baseline
    NAMES+=(baseline)
fi

in_turn() { if [ $(($1 % 2)) -eq 1 ]; then printf '%s\n' "${NAMES[@]}"; else printf '%s\n' "${NAMES[@]}" | tac; fi; }
RESULTS=$WORK/results.tsv
: > "$RESULTS"
# step NAME FS CMD...: caches dropped, CMD run in FS's directory, its wall time recorded.
step() {
    local job=$1 fs=$2; shift 2
    sync; echo 3 > /proc/sys/vm/drop_caches
    local t0 t1; t0=$(date +%s.%N)
    (cd "${DIR[$fs]}" && "$@") >/dev/null
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\n' "$job" "$fs" "$(echo "$t1 - $t0" | bc)" >> "$RESULTS"
}
SQL="CREATE TABLE t(id INTEGER PRIMARY KEY, k TEXT, v BLOB);"
for tx in $(seq 20); do
    SQL+="BEGIN;"
    for i in $(seq 1000); do SQL+="INSERT INTO t(k, v) VALUES ('k$tx-$i', randomblob(200));"; done
    SQL+="COMMIT;"
done
SQL+="CREATE INDEX tk ON t(k); SELECT count(*), sum(length(v)) FROM t WHERE k LIKE 'k1%';"
echo "$SQL" > "$WORK/workload.sql"
GIT=(git -c user.name=bench -c user.email=bench@localhost -c init.defaultBranch=main)

for round in $(seq "$ROUNDS"); do
    say "round $round of $ROUNDS"
    for fs in $(in_turn "$round"); do step untar "$fs" sh -c "tar -xf '$WORK/linux.tar' && sync -f ."; done
    for fs in $(in_turn "$round"); do step find "$fs" sh -c 'find . | wc -l'; done
    for fs in $(in_turn "$round"); do step ls-lR "$fs" ls -lR .; done
    for fs in $(in_turn "$round"); do step md5sum-all "$fs" sh -c 'find . -type f -print0 | xargs -0 md5sum'; done
    for fs in $(in_turn "$round"); do
        step git-add-commit "$fs" sh -c "cd linux-source-6.1/fs && ${GIT[*]} init -q && ${GIT[*]} add -A && ${GIT[*]} commit -qm tree"
    done
    for fs in $(in_turn "$round"); do step git-status "$fs" sh -c "cd linux-source-6.1/fs && ${GIT[*]} status --porcelain"; done
    for fs in $(in_turn "$round"); do step sqlite "$fs" sh -c "rm -f bench.db && sqlite3 bench.db < '$WORK/workload.sql' && sync -f ."; done
    for fs in $(in_turn "$round"); do step rm-rf "$fs" sh -c 'rm -rf linux-source-6.1 bench.db && sync -f .'; done
done

BASELINE_LABEL="baseline${URING_WAS:+ --io-uring}" python3 - "$RESULTS" "$ROUNDS" "${NAMES[@]}" <<'PY'
import os, sys, statistics, collections
rows = collections.defaultdict(list)
order = []
names = sys.argv[3:]
label = {"uring": "envelopefs --io-uring", "baseline": os.environ["BASELINE_LABEL"]}
for line in open(sys.argv[1]):
    job, fs, v = line.rstrip("\n").split("\t")
    rows[(job, fs)].append(float(v))
    if job not in order:
        order.append(job)
ours = [n for n in names if n not in ("ext4", "gocryptfs")]
head = ["step (seconds)"] + [label.get(n, n) for n in names]
head += [f"{label.get(n, n)} / gocryptfs" for n in ours] + [f"{label.get(n, n)} / ext4" for n in ours]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
for job in order:
    m = {fs: statistics.median(rows[(job, fs)]) for fs in names}
    cells = [job] + [f"{m[n]:.2f}" for n in names]
    cells += [f"{m[n] / m['gocryptfs']:.2f}×" for n in ours] + [f"{m[n] / max(m['ext4'], 0.01):.1f}×" for n in ours]
    print("| " + " | ".join(cells) + " |")
print(f"\nMedians of {sys.argv[2]} round(s); lower is better. Each round's figures:\n")
for job in order:
    print(f"* {job}: " + "; ".join(f"{label.get(fs, fs)} " + " / ".join(f"{v:.2f}" for v in rows[(job, fs)])
                                   for fs in names))
PY
echo "versions: $("$EVFS" --version)${BASELINE:+ (baseline: $BASELINE)}; gocryptfs $(gocryptfs -version 2>/dev/null | head -1 | cut -d' ' -f2 | tr -d ';'); $(uname -r)"
