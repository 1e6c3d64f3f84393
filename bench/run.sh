#!/usr/bin/env bash
# raftgate vs nginx vs HAProxy on one host: see bench/README.md.
#
#   bench/run.sh                 # 10 s per measurement
#   DURATION=5 bench/run.sh
#
# Proxies under test run pinned to core 0; the upstream (nginx, `return 200 "ok"`) and wrk
# share core 1. Everything listens on 127.0.0.1:18080-18087 only. Raw wrk output and the
# table land in bench/out/ (gitignored).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
OUT=$BENCH_DIR/out

DURATION=${DURATION:-10}      # seconds per measured run
WARMUP=${WARMUP:-2}           # seconds of warm-up before each measured run
ROUNDS=${ROUNDS:-3}           # measured runs per proxy and scenario; the table shows medians
CONNECTIONS=${CONNECTIONS:-64}
PROXY_CPU=${PROXY_CPU:-0}     # core for the proxy under test
LOAD_CPU=${LOAD_CPU:-1}       # core for wrk and the upstream
CARGO_LOCK=/tmp/raftgate-cargo.lock
# Hold the cargo lock while measuring, so builds and tests that take it wait instead of
# competing for the two cores. 0 to measure without it.
HOLD_CARGO_LOCK=${HOLD_CARGO_LOCK:-1}
LOCK_WAIT=${LOCK_WAIT:-900}   # seconds to wait for it before measuring without it
LOCK_FD=""

UPSTREAM_PORT=18080
RG_HTTP=18081 RG_HTTPS=18082 RG_ADMIN=18083
NGX_HTTP=18084 NGX_HTTPS=18085
HAP_HTTP=18086 HAP_HTTPS=18087
ALL_PORTS=("$UPSTREAM_PORT" "$RG_HTTP" "$RG_HTTPS" "$RG_ADMIN" "$NGX_HTTP" "$NGX_HTTPS" "$HAP_HTTP" "$HAP_HTTPS")

WRAP=()            # a command the proxies run under (bench/instructions.sh: valgrind)
NGINX_MASTER=on    # nginx's master_process

read -ra PROXIES <<<"${PROXIES:-raftgate nginx haproxy}"          # which proxies to run
read -ra SCENARIOS <<<"${SCENARIOS:-http1-keepalive tls-new-conn}" # which scenarios

BENCH_NAME=bench LOG_DIR=$OUT/logs ERROR_LOGS=(upstream nginx)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

wait_ready() { # name want-status url [curl args...]: poll until url answers want-status (bounded)
    local name=$1 want=$2 url=$3
    shift 3
    local code="" i
    for ((i = 0; i < 150; i++)); do
        alive "$name"
        code=$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [[ $code == "$want" ]] && return 0
        sleep 0.1
    done
    tail -n 20 "${LOGF[$name]}" >&2 || true
    die "$name: $url did not answer $want within 150 attempts (last: ${code:-none})"
}

cpu_jiffies() { # cpu: "busy total" jiffies of one core from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

cpu_pct() { # "busy0 total0" "busy1 total1": busy percent in between
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print "-" }'
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }


# ---------------------------------------------------------------------------------------------
# Tools

ensure_tools() {
    local pkgs=()
    command -v wrk >/dev/null || pkgs+=(wrk)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v curl >/dev/null || pkgs+=(curl)
    command -v openssl >/dev/null || pkgs+=(openssl)
    { command -v taskset && command -v flock && command -v pgrep; } >/dev/null || pkgs+=(util-linux procps)
    ((${#pkgs[@]})) || return 0
    apt_install "${pkgs[@]}"
    command -v wrk >/dev/null && command -v nginx >/dev/null && command -v haproxy >/dev/null ||
        die "wrk, nginx or haproxy still missing after apt-get install"
}

# ---------------------------------------------------------------------------------------------
# Setup

make_cert() {
    log "generating a self-signed RSA-2048 certificate for bench.local"
    openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 2 \
        -keyout "$RUN/tls/key.pem" -out "$RUN/tls/cert.pem" \
        -subj /CN=bench.local -addext subjectAltName=DNS:bench.local 2>"$RUN/tls/openssl.log" ||
        die "openssl req failed: $(cat "$RUN/tls/openssl.log")"
    cat "$RUN/tls/cert.pem" "$RUN/tls/key.pem" >"$RUN/tls/haproxy.pem"
    CERT_FP=$(openssl x509 -in "$RUN/tls/cert.pem" -noout -fingerprint -sha256 | cut -d= -f2)
}

make_manifests() {
    mkdir -p "$RUN/manifests"
    cp "$BENCH_DIR"/manifests/*.yaml "$RUN/manifests/"
    {
        printf 'apiVersion: v1\nkind: Secret\nmetadata:\n  name: bench-tls\n  namespace: bench\n'
        printf 'type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n'
        sed 's/^/    /' "$RUN/tls/cert.pem"
        printf '  tls.key: |\n'
        sed 's/^/    /' "$RUN/tls/key.pem"
    } >"$RUN/manifests/tls-secret.yaml"
}

resumes() { # port: "yes" if the server resumes a TLS 1.2 session on a new connection, as wrk does
    local sess=$RUN/tls/session-$1.pem
    openssl s_client -connect "127.0.0.1:$1" -tls1_2 -sess_out "$sess" </dev/null >/dev/null 2>&1 || true
    if openssl s_client -connect "127.0.0.1:$1" -tls1_2 -sess_in "$sess" </dev/null 2>/dev/null | grep -q '^Reused'; then
        echo yes
    else
        echo no
    fi
}

served_cert() { # port: SHA-256 fingerprint of the certificate served without SNI
    openssl s_client -connect "127.0.0.1:$1" -noservername </dev/null 2>/dev/null |
        openssl x509 -noout -fingerprint -sha256 2>/dev/null | cut -d= -f2
}

start_upstream() {
    mkdir -p "$RUN/upstream"
    render "$BENCH_DIR/upstream.conf" "$RUN/upstream/nginx.conf" DIR="$RUN/upstream"
    start upstream "$LOAD_CPU" nginx -p "$RUN/upstream" -e "$RUN/upstream/error.log" -c "$RUN/upstream/nginx.conf"
    wait_ready upstream 200 "http://127.0.0.1:$UPSTREAM_PORT/"
    [[ $(curl -s "http://127.0.0.1:$UPSTREAM_PORT/") == ok ]] || die "upstream does not answer \"ok\""
}

start_proxy() { # proxy: start it and wait until both ports proxy to the upstream
    local p=$1 http https
    case $p in
        raftgate)
            render "$BENCH_DIR/raftgate.yaml" "$RUN/raftgate.yaml" \
                MANIFESTS="$RUN/manifests" CERT="$RUN/tls/cert.pem" KEY="$RUN/tls/key.pem"
            log "raftgate check:"
            "$RAFTGATE_BIN" check --config "$RUN/raftgate.yaml" | sed 's/^/    /' >&2 ||
                die "raftgate check rejected the bench config or manifests"
            start raftgate "$PROXY_CPU" "${WRAP[@]}" "$RAFTGATE_BIN" run --config "$RUN/raftgate.yaml"
            wait_ready raftgate 200 "http://127.0.0.1:$RG_ADMIN/readyz"
            http=$RG_HTTP https=$RG_HTTPS
            ;;
        nginx)
            mkdir -p "$RUN/nginx"
            render "$BENCH_DIR/nginx.conf" "$RUN/nginx/nginx.conf" \
                DIR="$RUN/nginx" CERT="$RUN/tls/cert.pem" KEY="$RUN/tls/key.pem" MASTER="$NGINX_MASTER"
            start nginx "$PROXY_CPU" "${WRAP[@]}" nginx -p "$RUN/nginx" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf"
            http=$NGX_HTTP https=$NGX_HTTPS
            ;;
        haproxy)
            render "$BENCH_DIR/haproxy.cfg" "$RUN/haproxy.cfg" PEM="$RUN/tls/haproxy.pem"
            haproxy -c -q -f "$RUN/haproxy.cfg" || die "haproxy -c rejected the config"
            start haproxy "$PROXY_CPU" "${WRAP[@]}" haproxy -db -f "$RUN/haproxy.cfg"
            http=$HAP_HTTP https=$HAP_HTTPS
            ;;
    esac
    wait_ready "$p" 200 "http://127.0.0.1:$http/" -H 'Host: bench.local'
    wait_ready "$p" 200 "https://127.0.0.1:$https/" -H 'Host: bench.local'
    local body fp
    body=$(curl -sk -H 'Host: bench.local' "https://127.0.0.1:$https/")
    [[ $body == ok ]] || die "$p: https answered \"$body\", not the upstream's \"ok\""
    fp=$(served_cert "$https")
    [[ $fp == "$CERT_FP" ]] || die "$p serves a different certificate without SNI ($fp)"
    PORT_HTTP[$p]=$http
    PORT_HTTPS[$p]=$https
    RESUMES[$p]=$(resumes "$https")
}

# ---------------------------------------------------------------------------------------------
# Measurement

declare -A PORT_HTTP=() PORT_HTTPS=()
declare -A RPS=() P50=() P99=() ERRS=() ERR_DETAIL=() PCPU=() LCPU=() RESUMES=()

measure() { # scenario proxy round
    local s=$1 p=$2 round=$3 url args=(-H 'Host: bench.local')
    case $s in
        http1-keepalive) url=http://127.0.0.1:${PORT_HTTP[$p]}/ ;;
        tls-new-conn)
            url=https://127.0.0.1:${PORT_HTTPS[$p]}/
            args+=(-H 'Connection: close')
            ;;
    esac
    local raw=$OUT/$s-$p-r$round.txt
    log "$s / $p (round $round of $ROUNDS): warm-up ${WARMUP}s, then ${DURATION}s ($url)"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "${args[@]}" "$url" >"$OUT/$s-$p-r$round.warmup.txt"
    alive "$p"
    {
        echo "# $s / $p   $(date -Is)   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# taskset -c $LOAD_CPU wrk -t1 -c$CONNECTIONS -d${DURATION}s --latency ${args[*]} $url"
    } >"$raw"
    local p0 l0 p1 l1
    p0=$(cpu_jiffies "$PROXY_CPU") l0=$(cpu_jiffies "$LOAD_CPU")
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${args[@]}" "$url" >>"$raw"
    p1=$(cpu_jiffies "$PROXY_CPU") l1=$(cpu_jiffies "$LOAD_CPU")
    alive "$p"
    PCPU[$s/$p]=$(cpu_pct "$p0" "$p1")
    LCPU[$s/$p]=$(cpu_pct "$l0" "$l1")
    echo "# busy during the run: cpu$PROXY_CPU (proxy) ${PCPU[$s/$p]}%, cpu$LOAD_CPU (wrk + upstream) ${LCPU[$s/$p]}%" >>"$raw"

    local parsed
    parsed=$(parse_wrk "$raw")
    read -r "RPS[$s/$p]" "P50[$s/$p]" "P99[$s/$p]" "ERRS[$s/$p]" "ERR_DETAIL[$s/$p]" <<<"$parsed"
    [[ ${RPS[$s/$p]} != - ]] || die "could not parse wrk output $raw"
    log "  ${RPS[$s/$p]} req/s, p50 ${P50[$s/$p]} ms, p99 ${P99[$s/$p]} ms, errors ${ERRS[$s/$p]} (${ERR_DETAIL[$s/$p]}), cpu ${PCPU[$s/$p]}%/${LCPU[$s/$p]}%"
    local k=$s/$p
    record_round "$k" "$round" "${RPS[$k]}" "${P50[$k]}" "${P99[$k]}" "${PCPU[$k]}" "${LCPU[$k]}" "${ERRS[$k]}" "${ERR_DETAIL[$k]}"
}

# Prints "rps p50_ms p99_ms errors detail" from one wrk --latency output.
parse_wrk() {
    awk '
        function ms(v) {
            if (v ~ /us$/) return v / 1000
            if (v ~ /ms$/) return v + 0
            if (v ~ /m$/)  return v * 60000
            if (v ~ /s$/)  return v * 1000
            return v + 0
        }
        /^Requests\/sec:/                { rps = $2 }
        $1 == "50%"                      { p50 = ms($2) }
        $1 == "99%"                      { p99 = ms($2) }
        /Non-2xx or 3xx responses:/      { non2xx = $NF }
        /Socket errors:/ {
            # Socket errors: connect 0, read 0, write 0, timeout 0
            gsub(",", "")
            conn = $4; rd = $6; wr = $8; to = $10
        }
        END {
            total = non2xx + conn + rd + wr + to
            detail = ""
            if (non2xx) detail = detail "non2xx=" non2xx ","
            if (conn)   detail = detail "connect=" conn ","
            if (rd)     detail = detail "read=" rd ","
            if (wr)     detail = detail "write=" wr ","
            if (to)     detail = detail "timeout=" to ","
            sub(",$", "", detail)
            if (detail == "") detail = "-"
            printf "%s %.3f %.3f %d %s\n", (rps == "" ? "-" : rps), p50, p99, total, detail
        }' "$1"
}

# The proxy core's busy time per request, in µs: "busy%" "req/s".
us_per_request() { awk -v c="$1" -v r="$2" 'BEGIN { if (r > 0) printf "%.1f", c * 10000 / r; else print "-" }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'; }

print_table() {
    printf '%-17s %-9s %10s %9s %9s %7s %5s %5s %7s  %s\n' \
        scenario proxy 'req/s' 'p50(ms)' 'p99(ms)' errors "cpu$PROXY_CPU%" "cpu$LOAD_CPU%" 'us/req' \
        'raftgate/peer(req/s)'
    local s p r
    for s in "${SCENARIOS[@]}"; do
        for p in "${PROXIES[@]}"; do
            r=""
            [[ $p == raftgate ]] || r=$(ratio "${RPS[$s/raftgate]}" "${RPS[$s/$p]}")
            printf '%-17s %-9s %10.0f %9.3f %9.3f %7s %5s %5s %7s  %s\n' \
                "$s" "$p" "${RPS[$s/$p]}" "${P50[$s/$p]}" "${P99[$s/$p]}" "${ERRS[$s/$p]}" \
                "${PCPU[$s/$p]}" "${LCPU[$s/$p]}" "$(us_per_request "${PCPU[$s/$p]}" "${RPS[$s/$p]}")" "$r"
        done
    done
    local any=0
    for s in "${SCENARIOS[@]}"; do
        for p in "${PROXIES[@]}"; do
            if [[ ${ERR_DETAIL[$s/$p]} != - ]]; then
                ((any++)) || echo
                echo "errors in $s / $p: ${ERR_DETAIL[$s/$p]}"
            fi
        done
    done
    echo
    echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s (after ${WARMUP}s warm-up), $ROUNDS round(s), medians; proxy on cpu $PROXY_CPU, wrk + upstream on cpu $LOAD_CPU;"
    echo "errors = non-2xx/3xx responses + socket errors (connect, read, write, timeout);"
    echo "cpu$PROXY_CPU% / cpu$LOAD_CPU% = how busy the proxy's core / the wrk + upstream core was during the run;"
    echo "us/req = the proxy core's busy time per request (less is better; the fairer figure when cpu$LOAD_CPU is near 100%);"
    echo "tls-new-conn: wrk (TLS 1.2) offers its previous session on every new connection; servers that resume it:"
    local resumes=()
    for p in "${PROXIES[@]}"; do resumes+=("$p=${RESUMES[$p]:-?}"); done
    echo "  ${resumes[*]}"
    if ((ROUNDS > 1)); then
        echo "req/s in each round:"
        for s in "${SCENARIOS[@]}"; do
            for p in "${PROXIES[@]}"; do
                printf '  %-17s %-9s %s\n' "$s" "$p" "${S_RATE[$s/$p]}"
            done
        done
    fi
    echo "Raw wrk output in bench/out/."
    if [[ -n $NOTE ]]; then echo "NOTE: $NOTE"; fi
}

# ---------------------------------------------------------------------------------------------

# Tools, cores, free ports and the binary, then the cargo lock (bench/instructions.sh too).
preflight() {
    ensure_tools
    (($(nproc) >= 2)) || die "needs at least 2 CPUs (proxy on $PROXY_CPU, load on $LOAD_CPU)"
    local port
    for port in "${ALL_PORTS[@]}"; do
        ! port_in_use "$port" || die "127.0.0.1:$port is already in use"
    done
    raftgate_binary
    [[ -x $RAFTGATE_BIN ]] || die "no raftgate binary at $RAFTGATE_BIN"
    hold_cargo_lock
}

main() {
    [[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a whole number above 0"
    [[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a whole number of seconds"
    preflight

    mkdir -p "$OUT"
    rm -rf "$OUT/logs"
    find "$OUT" -maxdepth 1 -name "*.txt" ! -name "l4-*" -delete # not bench/l4.sh's output
    RUN=$(mktemp -d /tmp/raftgate-bench.XXXXXX)
    chmod 755 "$RUN" # nginx workers may run as nobody
    mkdir -p "$RUN/tls"
    make_cert
    make_manifests
    start_upstream

    # Rounds interleave the proxies, so that a slow spell of the machine does not land on
    # one proxy only.
    local p s round
    for ((round = 1; round <= ROUNDS; round++)); do
        for p in "${PROXIES[@]}"; do
            start_proxy "$p"
            for s in "${SCENARIOS[@]}"; do
                measure "$s" "$p" "$round"
            done
            if [[ $p == raftgate ]]; then
                curl -s "http://127.0.0.1:$RG_ADMIN/metrics" >"$OUT/raftgate-metrics.txt" || true
            fi
            stop "$p"
        done
    done
    summarize RPS

    {
        echo "raftgate bench  $(date -Is)  $(uname -srm)  $(nproc) cpus: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        echo "raftgate $("$RAFTGATE_BIN" --version | awk '{print $2}') ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'); $RAFTGATE_BUILD), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
        echo
        print_table
    } | tee "$OUT/results.txt"
}

# bench/instructions.sh sources this file for its functions.
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
