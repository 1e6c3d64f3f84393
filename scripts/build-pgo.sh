#!/usr/bin/env bash
# Builds the raftgate binary that ships: the `dist` profile (fat LTO, one codegen unit),
# optimised with a profile of raftgate's own request paths (PGO). See docs/build.md.
#
#   scripts/build-pgo.sh        # -> target/dist/raftgate (two full builds: 15-20 min on 2 cores)
#
# 1. an instrumented build (target/pgo-gen), 2. a training run of that binary on loopback
# ports 18121-18124 (HTTP/1.1 keep-alive and new connections, TLS, HTTP/2 over TLS,
# unknown hosts, L4 TCP), 3. llvm-profdata merge, 4. the final build with the profile.
# Needs wrk and curl (installed with apt-get if missing) and rustup's llvm-tools component
# (added if missing). Builds take /tmp/raftgate-cargo.lock, as every build here does.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LOCK=/tmp/raftgate-cargo.lock
PORTS=(18121 18122 18123 18124)

say() { printf '[build-pgo %s] %s\n' "$(date +%T)" "$*" >&2; }
die() {
    say "error: $*"
    exit 1
}

WORK=$(mktemp -d /tmp/raftgate-pgo.XXXXXX)
PID=""
cleanup() {
    if [[ -n $PID ]]; then kill -KILL "$PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

tools() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v curl >/dev/null || pkgs+=(curl)
    if ((${#pkgs[@]})); then
        local sudo=()
        ((EUID == 0)) || sudo=(sudo)
        say "installing ${pkgs[*]}"
        "${sudo[@]}" apt-get update
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "${pkgs[@]}"
    fi
    local bin
    bin="$(rustc --print sysroot)/lib/rustlib/$(rustc -vV | awk '/^host:/ { print $2 }')/bin"
    if [[ ! -x $bin/llvm-profdata ]]; then
        say "adding rustup's llvm-tools component (llvm-profdata)"
        rustup component add llvm-tools >&2 || die "rustup component add llvm-tools failed"
    fi
    PROFDATA=$bin/llvm-profdata
    [[ -x $PROFDATA ]] || die "no llvm-profdata at $PROFDATA"
}

build() { # target-dir rustflags: cargo build --profile dist under the lock
    say "cargo build --profile dist -p raftgate (target dir $1, RUSTFLAGS=$2)"
    flock "$LOCK" env CARGO_TARGET_DIR="$1" RUSTFLAGS="$2" cargo build --locked --profile dist -p raftgate >&2
}

# The training set-up: raftgate's own admin API is the upstream, as in the quickstart, so
# nothing else has to run.
write_config() {
    mkdir -p "$WORK/manifests"
    cat >"$WORK/raftgate.yaml" <<EOF
node_id: pgo
listen:
  http: 127.0.0.1:18121
  https: 127.0.0.1:18122
admin:
  listen: 127.0.0.1:18123
source:
  kind: manifests
  path: $WORK/manifests
l4:
  tcp_services_configmap: pgo/tcp-services
  bind: 127.0.0.1
http:
  drain_grace: 1s
log:
  level: warn
EOF
    cat >"$WORK/manifests/pgo.yaml" <<'EOF'
apiVersion: v1
kind: Service
metadata: {name: admin, namespace: pgo}
spec:
  ports: [{name: http, port: 80, targetPort: 18123}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: admin, namespace: pgo}
subsets: [{addresses: [{ip: 127.0.0.1}], ports: [{name: http, port: 18123}]}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: pgo
  namespace: pgo
  annotations:
    nginx.ingress.kubernetes.io/ssl-redirect: "false"
spec:
  ingressClassName: raftgate
  rules:
  - host: pgo.local
    http:
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: admin, port: {name: http}}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: tcp-services, namespace: pgo}
data:
  "18124": "pgo/admin:http"
EOF
}

wait_ok() { # url [curl args]: until it answers 200 (bounded)
    local i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$PID" 2>/dev/null || die "the instrumented raftgate exited: $(tail -n 5 "$WORK/raftgate.log")"
        [[ $(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$@") == 200 ]] && return 0
        sleep 0.1
    done
    die "no 200 from $1 (log: $(tail -n 5 "$WORK/raftgate.log"))"
}

train() { # instrumented binary
    local port
    for port in "${PORTS[@]}"; do
        ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "127.0.0.1:$port is already in use"
    done
    write_config
    mkdir -p "$WORK/profiles"
    # The binary writes its profile when it exits; %p: one file per process.
    LLVM_PROFILE_FILE="$WORK/profiles/raftgate-%p.profraw" "$1" run --config "$WORK/raftgate.yaml" \
        >"$WORK/raftgate.log" 2>&1 &
    PID=$!
    local h=(-H 'Host: pgo.local')
    wait_ok "http://127.0.0.1:18121/healthz" "${h[@]}"
    wait_ok "http://127.0.0.1:18124/healthz"
    say "training: HTTP/1.1 keep-alive, new TLS connections, HTTP/2, unknown hosts, L4 TCP"
    wrk -t1 -c64 -d8s "${h[@]}" http://127.0.0.1:18121/healthz >"$WORK/wrk-keepalive.txt"
    wrk -t1 -c16 -d3s "${h[@]}" -H 'Connection: close' https://127.0.0.1:18122/healthz >"$WORK/wrk-tls.txt"
    wrk -t1 -c16 -d2s "${h[@]}" -H 'Connection: close' http://127.0.0.1:18121/healthz >"$WORK/wrk-close.txt"
    curl -sk --http2 -Z --parallel-max 32 "${h[@]}" "https://127.0.0.1:18122/healthz?[1-5000]" >/dev/null 2>&1
    # (No h2c run: Debian 12's curl 7.88 breaks a reused prior-knowledge connection, curl
    # PR #10643; h2c differs from the run above only in how the connection starts.)
    wrk -t1 -c8 -d2s -H 'Host: nowhere.local' http://127.0.0.1:18121/ >"$WORK/wrk-404.txt"
    wrk -t1 -c16 -d3s http://127.0.0.1:18124/healthz >"$WORK/wrk-l4.txt"
    grep -h 'Requests/sec' "$WORK"/wrk-*.txt | sed 's/^/    /' >&2
    kill -TERM "$PID"
    wait "$PID" || die "the instrumented raftgate did not exit cleanly: $(tail -n 5 "$WORK/raftgate.log")"
    PID=""
    compgen -G "$WORK/profiles/*.profraw" >/dev/null || die "the training run wrote no profile"
}

main() {
    command -v cargo >/dev/null || die "cargo not found"
    tools
    # A fixed path for what the instrumented build scripts and macros write, so that RUSTFLAGS,
    # and with them cargo's cache of the instrumented build, stay the same from run to run.
    build "$REPO/target/pgo-gen" "-Cprofile-generate=$REPO/target/pgo-gen/build-profiles"
    train "$REPO/target/pgo-gen/dist/raftgate"
    mkdir -p "$REPO/target/pgo"
    "$PROFDATA" merge -o "$WORK/raftgate.profdata" "$WORK"/profiles/*.profraw
    # Named by its content: cargo does not look into the profile, only at RUSTFLAGS, so a new
    # profile must change them for every crate to be optimised with it.
    local sum profile
    sum=$(sha256sum "$WORK/raftgate.profdata" | cut -c1-16)
    profile=$REPO/target/pgo/raftgate-$sum.profdata
    rm -f "$REPO"/target/pgo/raftgate-*.profdata # earlier runs' (12 MB each)
    mv "$WORK/raftgate.profdata" "$profile"
    # Functions the training never ran get no profile: no warning for each of them.
    build "$REPO/target" "-Cprofile-use=$profile -Cllvm-args=-pgo-warn-missing-function=false"
    say "built $REPO/target/dist/raftgate"
}

main "$@"
