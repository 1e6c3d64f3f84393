#!/usr/bin/env bash
# Runs the whole test suite. This is the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite needs only the Rust toolchain and loopback networking today; system
# packages for later suites (network namespaces) are installed here when needed.
cargo test --workspace "$@"
