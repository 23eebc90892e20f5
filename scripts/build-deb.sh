#!/usr/bin/env bash
# Builds a Debian package of envelopefs from this tree (no cargo-deb needed): the binary in
# /usr/bin, mount(8)'s helper links in /usr/sbin, man pages made from the command line
# (clap_mangen), bash/zsh/fish completions (clap_complete), and the systemd template unit
# envelopefs@.service (packaging/).
#   scripts/build-deb.sh [--binary PATH] [--out DIR]
# Without --binary it builds the release binary first. Prints the package's path. Needs
# dpkg-deb (installed if missing).
set -euo pipefail
umask 022
BIN="" OUT=""
while [ $# -gt 0 ]; do
    case $1 in
        --binary) BIN=$(realpath "$2"); shift 2 ;;
        --out) OUT=$(realpath -m "$2"); shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
source scripts/lib/setup.sh
OUT=${OUT:-$PWD/target/debian}
ensure_apt dpkg-deb dpkg
if [ -z "$BIN" ]; then
    ensure_rust
    say "cargo build --release"
    cargo build --release --locked --quiet
    BIN=target/release/envelopefs
fi
# The version of this tree (Cargo.toml): --binary is expected to be built from it.
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
chmod 755 "$STAGE"

install -D -m 0755 "$BIN" "$STAGE/usr/bin/envelopefs"
# Line tables are for profiling this tree, not for an installed tool.
strip --strip-debug "$STAGE/usr/bin/envelopefs" 2>/dev/null || say "not stripped (no strip for this binary)"
"$BIN" install-helper --sbin "$STAGE/usr/sbin" --target /usr/bin/envelopefs >/dev/null
"$BIN" generate-docs --man "$STAGE/usr/share/man/man1" --completions "$STAGE/completions" >/dev/null
gzip -9n "$STAGE"/usr/share/man/man1/*.1
install -D -m 0644 "$STAGE/completions/envelopefs.bash" "$STAGE/usr/share/bash-completion/completions/envelopefs"
install -D -m 0644 "$STAGE/completions/_envelopefs" "$STAGE/usr/share/zsh/vendor-completions/_envelopefs"
install -D -m 0644 "$STAGE/completions/envelopefs.fish" "$STAGE/usr/share/fish/vendor_completions.d/envelopefs.fish"
rm -r "$STAGE/completions"
install -D -m 0644 packaging/envelopefs@.service "$STAGE/usr/lib/systemd/system/envelopefs@.service"
for doc in README.md docs/OPERATIONS.md docs/SECURITY.md docs/FORMAT.md; do
    install -D -m 0644 "$doc" "$STAGE/usr/share/doc/envelopefs/$(basename "$doc")"
done
mkdir -p "$STAGE/DEBIAN"
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: envelopefs
Version: $VERSION
Architecture: $ARCH
Maintainer: envelopefs developers <envelopefs@localhost>
Depends: fuse3
Suggests: softhsm2
Section: utils
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
Description: encrypted FUSE file system built on envelope encryption
 envelopefs mounts a plaintext view of an encrypted backing directory. Every
 extent has its own data key, wrapped by a key-encryption key that a root of
 trust (a passphrase keystore, a PKCS#11 HSM or the AWS KMS API) wraps in turn:
 keys rotate by re-wrapping, and shredding destroys keys, not data.
CONTROL
mkdir -p "$OUT"
DEB="$OUT/envelopefs_${VERSION}_${ARCH}.deb"
dpkg-deb --root-owner-group -Zgzip --build "$STAGE" "$DEB" >/dev/null
echo "$DEB"
