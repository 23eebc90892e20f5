#!/usr/bin/env bash
# Sets up what the test suite needs (only what is missing) and runs all of it:
# formatting, lints (warnings are errors), then every unit, integration and doc test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

ensure_rust
ensure_apt gcc build-essential
# Mount tests: FUSE, and the real tools they drive.
ensure_apt fusermount3 fuse3
ensure_apt fio fio
ensure_apt git git
ensure_apt python3 python3
ensure_apt unshare util-linux
ensure_apt fincore util-linux-extra
if ! command -v fsx >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/fsx" ]; then
    say "cargo install fsx"
    cargo install fsx --locked --quiet
fi
# Real roots of trust: a SoftHSM2 token (PKCS#11) and moto's AWS-KMS-API server, both on
# this machine only (tests start their own on private directories and loopback ports).
ensure_apt softhsm2-util softhsm2
ensure_moto "$PWD/target/moto-venv"
export ENVELOPEFS_MOTO_SERVER="$PWD/target/moto-venv/bin/moto_server"
[ -e /dev/fuse ] || say "warning: /dev/fuse is missing; mount tests will fail (CI provides it)"

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --all-targets --all-features --locked -- -D warnings

say "cargo test (all features: the AWS KMS backend too)"
# Volumes made by tests anchor their KEK generations in a state directory of their own, not
# in the host's (/var/lib/envelopefs or ~/.local/state/envelopefs).
ENVELOPEFS_STATE_DIR=$(mktemp -d /tmp/envelopefs-state-XXXXXX)
export ENVELOPEFS_STATE_DIR
trap 'rm -rf "$ENVELOPEFS_STATE_DIR"' EXIT
cargo test --all-features --locked --no-fail-fast 2>&1 | tee /tmp/envelopefs-test.log
# The mount suites again, every mount served over io_uring rings (`mount --io-uring`: the
# ring threads answer most requests themselves, src/fuse_native.rs), where the kernel has
# them; the fuse module's enable_uring is switched on for this and put back.
knob=/sys/module/fuse/parameters/enable_uring
if [ -w "$knob" ] && was=$(cat "$knob") && echo Y > "$knob" 2>/dev/null; then
    trap 'echo "$was" > "$knob"; rm -rf "$ENVELOPEFS_STATE_DIR"' EXIT
    say "the mount suites again over io_uring"
    ENVELOPEFS_TEST_MOUNT_ARGS=--io-uring ENVELOPEFS_TEST_EXPECT_TRANSPORT=io_uring \
        cargo test --all-features --locked --no-fail-fast --test mount_ops --test entries --test rollback --test open_ahead --test walk_ahead --test absence --test bad_input \
        --test xattr_sets --test tamper_mount --test write_behind --test hostile --test mount_tools --test shred \
        --test rotate --test revocation --test tenants 2>&1 |
        tee -a /tmp/envelopefs-test.log || rc=$?
    echo "$was" > "$knob"
    [ "${rc:-0}" = 0 ] || { say "the mount suites failed over io_uring"; exit "$rc"; }
else
    say "warning: no FUSE over io_uring here ($knob): the mount suites ran over /dev/fuse only"
fi
# The benches must at least build (they are not run here: no timings in CI).
cargo bench --no-run --locked >/dev/null 2>&1 || { say "benches do not build"; exit 1; }
passed=$(grep -Eo '[0-9]+ passed' /tmp/envelopefs-test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/envelopefs-test.log | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
