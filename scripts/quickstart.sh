#!/usr/bin/env bash
# Sets up (only what is missing), builds envelopefs, creates a demo volume on the embedded
# passphrase keystore and mounts it. Re-running it reuses the demo volume.
#
#   DEMO=./demo scripts/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh

DEMO=${DEMO:-$PWD/demo}
ensure_rust
ensure_apt gcc build-essential
ensure_apt fusermount3 fuse3

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
mkdir -p "$DEMO/plain"
if grep -q " $DEMO/plain " /proc/self/mountinfo; then
    say "already mounted"
else
    "$BIN" mount "$DEMO/cipher" "$DEMO/plain" --passfile "$PASSFILE"
fi
echo "Hello from envelopefs" > "$DEMO/plain/hello.txt"
cat <<MSG

Mounted: $DEMO/plain  (plaintext view; everything written there is encrypted)
Backing: $DEMO/cipher (what lands on disk: encrypted names and contents)
Passphrase: $PASSFILE (demo only; real volumes use a prompt, --extpass or a KMS)

Try:  ls -la $DEMO/plain $DEMO/cipher/data
      $BIN status $DEMO/cipher
Unmount:  $BIN umount $DEMO/plain      (or: fusermount3 -u $DEMO/plain)
Remount:  $BIN mount $DEMO/cipher $DEMO/plain --passfile $PASSFILE
MSG
