#!/usr/bin/env bash
# Installs claro's Debian package on this machine for real (dpkg -i, as
# root), then runs the installed binary as the package's `claro` user for a
# three-server cluster on 127.0.186.1-3 with the layout docs/OPERATIONS.md
# describes (/etc/claro, /var/lib/claro, /srv/claro): the servers must
# elect a coordinator, take a job, make a backup, and stop gracefully.
# Then it removes the package (the data stays, as a removal keeps it) and
# what it made. Refuses to run where /etc/claro/ClaroServers.conf exists:
# it is for a test machine. Without systemd running, the unit's command is
# run by hand (runuser), as the unit would.
#
#   packaging/deb/try-install.sh [target/debian/claro_*.deb]
set -euo pipefail
cd "$(dirname "$0")/../.."
deb=$(realpath "${1:-$(ls -t target/debian/claro_*.deb | head -1)}")
[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
[ ! -e /etc/claro/ClaroServers.conf ] || { echo "/etc/claro/ClaroServers.conf exists: not on a machine in use" >&2; exit 2; }
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    dpkg --purge claro >/dev/null 2>&1 || true
    rm -rf /etc/claro /etc/claro-ca /var/lib/claro /srv/claro /tmp/claro-try.backup
}
trap cleanup EXIT
dpkg -i "$deb" >/dev/null
getent passwd claro >/dev/null || { echo "postinst made no claro user" >&2; exit 1; }
[ "$(stat -c '%U %a' /var/lib/claro)" = "claro 700" ] || { echo "/var/lib/claro: $(stat -c '%U %a' /var/lib/claro)" >&2; exit 1; }
command -v claro >/dev/null && man -w claro >/dev/null 2>&1 || echo "note: man did not find claro(1) (no man-db here?)"
claro init --dir /etc/claro --ca-dir /etc/claro-ca --cluster try \
    --server srv1=127.0.186.1 --server srv2=127.0.186.2 --server srv3=127.0.186.3 \
    --data-dir /var/lib/claro --shared-root /srv/claro >/dev/null
chown -R claro:claro /etc/claro/tls
C=(claro --config /etc/claro/ClaroServers.conf)
"${C[@]}" config check
for i in 1 2 3; do
    runuser -u claro -- "${C[@]}" serve --name "srv$i" 2>"/tmp/claro-try-srv$i.log" &
    pids+=($!)
    sleep 1
done
for _ in $(seq 1 100); do
    n=$("${C[@]}" status --json 2>/dev/null | python3 -c 'import json,sys; v=json.load(sys.stdin); print(sum(s["synchronized"] for s in v["servers"]) if v["coordinator"] else 0)' 2>/dev/null || echo 0)
    [ "$n" = 3 ] && break
    sleep 0.3
done
"${C[@]}" status | head -6
[ "$n" = 3 ] || { echo "the three servers did not come up" >&2; tail -5 /tmp/claro-try-srv*.log >&2; exit 1; }
result=$("${C[@]}" submit --wait --inline '6 * 7')
[ "$result" = 42 ] || { echo "the job answered: $result" >&2; exit 1; }
"${C[@]}" backup /tmp/claro-try.backup
for i in 3 2 1; do "${C[@]}" stop "srv$i" >/dev/null; done
wait
pids=()
dpkg -r claro >/dev/null
[ -d /var/lib/claro/srv1 ] || { echo "removing the package removed the data" >&2; exit 1; }
echo "ok: installed, three servers as user claro took a job (42) and made a backup, stopped; removal kept the data"
