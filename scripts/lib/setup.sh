# Shared set-up for scripts/*.sh: installs what is missing, and nothing that is present.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else
        say "need root to run: $*"; return 1
    fi
}

APT_UPDATED=""
# ensure_apt CMD PACKAGE...: installs PACKAGEs (Debian) unless CMD is already on PATH.
ensure_apt() {
    local cmd=$1; shift
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        say "$cmd is missing and there is no apt-get; install: $*"; return 1
    fi
    if [ -z "$APT_UPDATED" ]; then
        say "apt-get update"
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || { say "cargo not found: install Rust (https://rustup.rs)"; return 1; }
    if command -v rustup >/dev/null 2>&1; then
        for c in rustfmt clippy; do
            rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
        done
    fi
}

# ensure_moto DIR: a venv at DIR with moto's AWS-KMS-API server (pinned), unless present.
MOTO_VERSION=5.2.5
ensure_moto() {
    local venv=$1
    [ -x "$venv/bin/moto_server" ] && return 0
    say "installing moto[server]==$MOTO_VERSION in $venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        ensure_apt_pkg python3-venv
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
}

# ensure_apt_pkg PACKAGE: installs a package that has no command of its own to test for.
ensure_apt_pkg() {
    dpkg -s "$1" >/dev/null 2>&1 && return 0
    if [ -z "$APT_UPDATED" ]; then
        as_root apt-get update -qq
        APT_UPDATED=1
    fi
    say "installing $1"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$1" >/dev/null
}

# steady_memory: for benchmarks that drop caches. On a VM whose balloon driver reports free
# pages to the host (virtio free page reporting, /sys/module/page_reporting), the page cache
# that `drop_caches` frees is handed back to the host, and the next cold read that lands on
# those pages faults on the host for each one: it copies at a fraction of its speed, in some
# rounds and not others, for every file system alike (plain ext4 `dd`: 0.8-1.0 against
# 1.8 GB/s in 2 rounds of 12; docs/BENCHMARKS.md, 2026-12-06). This stops the reporting for
# the run (an order above the largest there is) and touches STEADY_MEMORY_GIB (default 6)
# of memory once, so that the pages the run reuses are backed again. Call steady_memory_end
# from the script's exit trap: it puts the reporting back. STEADY_MEMORY=0 leaves it all.
STEADY_MEMORY_KNOB=/sys/module/page_reporting/parameters/page_reporting_order
STEADY_MEMORY_WAS=""
steady_memory() {
    [ "${STEADY_MEMORY:-1}" = 0 ] && return 0
    [ -w "$STEADY_MEMORY_KNOB" ] || return 0
    STEADY_MEMORY_WAS=$(cat "$STEADY_MEMORY_KNOB")
    # /proc/buddyinfo: "Node 0, zone NAME" and one count per order.
    awk 'NR == 1 { print NF - 4 }' /proc/buddyinfo > "$STEADY_MEMORY_KNOB"
    local gib=${STEADY_MEMORY_GIB:-6} avail
    avail=$(awk '/^MemAvailable:/ { print int($2 / 1048576) - 2 }' /proc/meminfo)
    [ "$avail" -lt "$gib" ] && gib=$avail
    [ "$gib" -gt 0 ] || return 0
    say "free page reporting off for the run; touching $gib GiB once"
    python3 -c '
import mmap, sys
n = int(sys.argv[1]) << 30
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, n, 4096):
    m[i] = 1
' "$gib"
}
steady_memory_end() {
    [ -n "$STEADY_MEMORY_WAS" ] && echo "$STEADY_MEMORY_WAS" > "$STEADY_MEMORY_KNOB"
    STEADY_MEMORY_WAS=""
}
