#!/usr/bin/env bash
# Runs the whole test suite. This is the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite needs the Rust toolchain, loopback networking, and for the VIP tests (root
# only: they build network namespaces) iproute2's `ip` and util-linux's `setpriv`.
if [ "$(id -u)" = 0 ] && ! command -v ip >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
fi
cargo test --workspace "$@"
