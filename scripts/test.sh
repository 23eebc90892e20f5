#!/usr/bin/env bash
# Sets up what the test suite needs (only what is missing) and runs all of it:
# formatting, lints (warnings are errors), then every unit, integration and doc test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

ensure_rust
ensure_apt gcc build-essential

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy (all targets, all features, -D warnings)"
cargo clippy --all-targets --all-features --locked -- -D warnings

say "cargo test"
cargo test --all-features --locked --no-fail-fast 2>&1 | tee /tmp/envelopefs-test.log
# The benches must at least build (they are not run here: no timings in CI).
cargo bench --no-run --locked >/dev/null 2>&1 || { say "benches do not build"; exit 1; }
passed=$(grep -Eo '[0-9]+ passed' /tmp/envelopefs-test.log | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' /tmp/envelopefs-test.log | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
