#!/usr/bin/env bash
# VIP failover benchmark: raftgate (3 members, default timing) against keepalived (VRRP, default
# timing) in the same network-namespace topology, kill -9 of the VIP owner, 20 runs each, plus ARP
# checks (kill -9 and SIGSTOP). Needs root. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    echo "bench/failover.sh needs root: it creates network namespaces, adds VIP addresses and opens raw ARP sockets" >&2
    exit 1
fi
if ! command -v keepalived >/dev/null; then
    apt-get install -y keepalived || { apt-get update && apt-get install -y keepalived; }
fi
if [ -z "${RAFTGATE_BIN:-}" ]; then
    flock /tmp/raftgate-cargo.lock cargo build --release -p raftgate
    RAFTGATE_BIN=target/release/raftgate
fi
exec python3 bench/failover.py "$RAFTGATE_BIN"
