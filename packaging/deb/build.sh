#!/usr/bin/env bash
# Builds claro's Debian package: the `dist` binary (optimized, stripped of
# its debug info), manual pages and shell completions made by that binary,
# the systemd unit, the alert rules and the docs. Needs cargo-deb
# (`cargo install cargo-deb`). Writes target/debian/claro_VERSION_ARCH.deb.
#
#   packaging/deb/build.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v cargo-deb >/dev/null || { echo "cargo-deb is missing: cargo install cargo-deb" >&2; exit 2; }
cargo build --profile dist --locked
extra=target/deb-extra
rm -rf "$extra" && mkdir -p "$extra/man" "$extra/completions"
target/dist/claro man-pages "$extra/man" >/dev/null
gzip -9n "$extra"/man/*.1
target/dist/claro completions bash >"$extra/completions/claro"
target/dist/claro completions zsh >"$extra/completions/_claro"
target/dist/claro completions fish >"$extra/completions/claro.fish"
cargo deb --no-build --profile dist --locked
