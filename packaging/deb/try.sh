#!/usr/bin/env bash
# Tries claro's Debian package on this machine without installing it: the
# package is unpacked into a clean folder (dpkg-deb -x), its files are
# checked, and its binary runs a one-server cluster on 127.0.186.1 that
# must answer `status` and a job, then stop. Prints what it did; exit 0 when
# all held.
#
#   packaging/deb/try.sh [target/debian/claro_*.deb]
set -euo pipefail
cd "$(dirname "$0")/../.."
deb=${1:-$(ls -t target/debian/claro_*.deb | head -1)}
root=$(mktemp -d)
work=$(mktemp -d)
trap 'kill $srv 2>/dev/null || true; rm -rf "$root" "$work"' EXIT
srv=
dpkg-deb -I "$deb" | sed -n 's/^ \(Package\|Version\|Depends\|Installed-Size\):/\1:/p'
dpkg-deb -x "$deb" "$root"
for f in usr/bin/claro lib/systemd/system/claro.service usr/share/claro/claro-alerts.yml \
    usr/share/man/man1/claro.1.gz usr/share/man/man1/claro-submit.1.gz \
    usr/share/bash-completion/completions/claro usr/share/doc/claro/OPERATIONS.md; do
    [ -e "$root/$f" ] || { echo "missing from the package: $f" >&2; exit 1; }
done
dpkg-deb -e "$deb" "$root/DEBIAN"
for s in postinst prerm postrm; do sh -n "$root/DEBIAN/$s"; done
if command -v systemd-analyze >/dev/null; then
    sed "s#/usr/bin/claro#$root/usr/bin/claro#" "$root/lib/systemd/system/claro.service" >"$work/claro.service"
    systemd-analyze verify "$work/claro.service" 2>&1 | grep -v "User=\|Group=" || true
fi
bin="$root/usr/bin/claro"
echo "binary: $(du -h "$bin" | cut -f1), $($bin --version)"
cd "$work"
"$bin" init --dir conf --server srv1=127.0.186.1 >/dev/null
mkdir -p hotfolders
"$bin" --config conf/ClaroServers.conf serve 2>srv1.log &
srv=$!
for _ in $(seq 1 50); do
    "$bin" --config conf/ClaroServers.conf status >/dev/null 2>&1 && break
    sleep 0.2
done
"$bin" --config conf/ClaroServers.conf status | head -3
result=$("$bin" --config conf/ClaroServers.conf submit --wait --inline '6 * 7')
[ "$result" = 42 ] || { echo "the job answered: $result" >&2; exit 1; }
"$bin" --config conf/ClaroServers.conf stop srv1 >/dev/null
wait $srv
echo "ok: unpacked, checked, served a job (42) and stopped"
