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
