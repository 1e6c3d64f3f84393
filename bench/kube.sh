#!/usr/bin/env bash
# Kubernetes source benchmark: API change to served on all 3 members (p50/p99 over 200
# changes), and 10,000 Ingresses created in one burst, with each member's RSS. See bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p raftgate -p raftgate-chaos-tests --bins
exec python3 bench/kube.py target/release/raftgate target/release/raftgate-test-apiserver
