#!/usr/bin/env bash
# Builds raftgate, runs it on its built-in defaults (no Kubernetes, no root, nothing else
# running), and sends real requests through the proxy. The demo routes Host
# demo.localhost to raftgate's own admin API.
#
#   scripts/quickstart.sh          # then keeps running until Ctrl-C
#   scripts/quickstart.sh --once   # stops after the requests
#   scripts/quickstart.sh --once --dev   # the same with the debug build the tests
#                                        # already made (what CI runs: no second
#                                        # five-minute optimised build)
set -euo pipefail
cd "$(dirname "$0")/.."
once=false
profile=release
for arg in "$@"; do
  case "$arg" in
    --once) once=true ;;
    --dev) profile=dev ;;
    *) echo "usage: scripts/quickstart.sh [--once] [--dev]" >&2; exit 2 ;;
  esac
done

if [ "$profile" = dev ]; then
  cargo build -p raftgate
  bin=target/debug/raftgate
else
  cargo build --release -p raftgate
  bin=target/release/raftgate
fi
"$bin" run &
pid=$!
trap 'kill -TERM $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT

# Wait for the first routing table, not a fixed time.
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:10254/readyz >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "raftgate exited" >&2; exit 1; }
  sleep 0.1
done
curl -sf http://127.0.0.1:10254/readyz >/dev/null

say() { printf '\n$ %s\n' "$*"; "$@"; }
say curl -s -H 'Host: demo.localhost' http://127.0.0.1:8080/api/v1/status
say curl -s --http2-prior-knowledge -H 'Host: demo.localhost' http://127.0.0.1:8080/healthz
say curl -sk --http2 --resolve demo.localhost:8443:127.0.0.1 https://demo.localhost:8443/readyz
say curl -s -o /dev/null -w '%{http_code} for an unknown host\n' -H 'Host: nobody.example' http://127.0.0.1:8080/

# Fail loudly if the proxy did not route.
curl -sf -H 'Host: demo.localhost' http://127.0.0.1:8080/healthz | grep -q ok

if $once; then
  exit 0
fi
echo
echo "raftgate is running (pid $pid): http :8080, https :8443, admin 127.0.0.1:10254. Ctrl-C stops it."
wait $pid
