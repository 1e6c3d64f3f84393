#!/usr/bin/env bash
# Raft benchmark: propagation latency (p50/p99 over 200 changes, 3 members), the size and apply time
# of one endpoint change with 10,000 Ingresses, and cold start. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p raftgate
exec python3 bench/raft.py target/release/raftgate
