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
