#!/usr/bin/env bash
# CLI calls to a server that loses packets: a one-server cluster on
# 127.0.176.1, iptables dropping 30 % of the packets to and from it (the
# `statistic` match: some kernels have no netem), then 60 `claro settings
# get k --server srv1` with the CLI's own defaults. Prints how many failed
# and how long the 60 took. Needs root and iptables; touches only rules
# marked `claro-lossy` on 127.0.176.1, removed at the end.
#
#   benches/support/lossy/cli-calls.sh [CLARO_BINARY]
set -u
B=${1:-target/debug/claro}
B=$(realpath "$B")
dir=$(mktemp -d)
cd "$dir" || exit 1
"$B" init --dir conf --server srv1=127.0.176.1 >/dev/null 2>&1
mkdir -p hotfolders
"$B" --config conf/ClaroServers.conf serve >srv1.log 2>&1 &
srv=$!
rule() { iptables "$1" INPUT "$2" 127.0.176.1 -m statistic --mode random --probability 0.3 -m comment --comment claro-lossy -j DROP; }
cleanup() {
    for way in -d -s; do rule -D "$way" 2>/dev/null; done
    kill "$srv" 2>/dev/null
    wait "$srv" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
sleep 3
"$B" --config conf/ClaroServers.conf settings set k v >/dev/null 2>&1
for way in -d -s; do rule -A "$way"; done
fail=0
start=$(date +%s%N)
for _ in $(seq 1 60); do
    "$B" --config conf/ClaroServers.conf settings get k --server srv1 >/dev/null 2>&1 || fail=$((fail + 1))
done
echo "$B: failed $fail of 60 in $((($(date +%s%N) - start) / 1000000)) ms"
