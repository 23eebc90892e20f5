#!/usr/bin/env bash
# Sets up (only what is missing), builds envelopefs, and creates a demo volume on the
# embedded passphrase keystore. Re-running it reuses the demo volume.
#
#   DEMO=./demo scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

DEMO=${DEMO:-$PWD/demo}
ensure_rust
ensure_apt gcc build-essential

say "building envelopefs (release)"
cargo build --release --locked
BIN=$PWD/target/release/envelopefs

mkdir -p "$DEMO"
chmod 700 "$DEMO"
PASSFILE=$DEMO/passphrase
if [ ! -f "$PASSFILE" ]; then
    # A demo passphrase in a private file; real volumes use a prompt, --extpass or a KMS.
    (umask 077; head -c 24 /dev/urandom | base64 > "$PASSFILE")
fi
if [ ! -f "$DEMO/cipher/envelopefs.conf" ]; then
    "$BIN" init "$DEMO/cipher" --passfile "$PASSFILE"
fi
"$BIN" status "$DEMO/cipher"
cat <<MSG

Demo volume: $DEMO/cipher (passphrase in $PASSFILE)
Try:  $BIN status $DEMO/cipher --json
      $BIN passwd $DEMO/cipher --passfile $PASSFILE
MSG
