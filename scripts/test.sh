#!/usr/bin/env bash
# Runs the whole test suite. This is the README's test command, and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# The suite needs the Rust toolchain, loopback networking, for the VIP tests (root only:
# they build network namespaces) iproute2's `ip`, util-linux's `setpriv` and, for the
# chaos scenarios' partitions and packet loss, `nft` (and `curl`, which writes to the test
# API server inside its namespace, libfaketime, which moves a node's wall clock, and
# e2fsprogs, which makes and repairs each node's little ext4 data disk, and ethtool, which
# turns checksum offload off where the packet-delay relay copies frames); and for the status
# page test Debian's headless Chromium. As root, whatever is missing is installed.
if [ "$(id -u)" = 0 ]; then
    missing=""
    command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
    command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
    command -v nft >/dev/null 2>&1 || missing="$missing nftables"
    command -v curl >/dev/null 2>&1 || missing="$missing curl"
    [ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing="$missing libfaketime"
    command -v mkfs.ext4 >/dev/null 2>&1 && command -v e2fsck >/dev/null 2>&1 || missing="$missing e2fsprogs"
    command -v ethtool >/dev/null 2>&1 || missing="$missing ethtool"
    if [ -n "$missing" ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
fi
cargo test --workspace "$@"
