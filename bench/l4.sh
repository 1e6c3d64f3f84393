#!/usr/bin/env bash
# raftgate's L4 proxy vs nginx (stream) vs HAProxy (mode tcp) on one host: see bench/README.md.
#
#   bench/l4.sh                  # 10 s per measurement
#   DURATION=5 bench/l4.sh
#
# Proxies under test run pinned to core 0; the load (iperf3 client, bench/loadgen) and the
# upstreams (iperf3 server, TCP and UDP echo) share core 1. Everything listens on
# 127.0.0.1:18100-18131 only. Raw output and the table land in bench/out/l4-* (gitignored).
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
OUT=$BENCH_DIR/out

DURATION=${DURATION:-10}          # seconds per measured run
WARMUP=${WARMUP:-2}               # seconds of warm-up before each measured run
ROUNDS=${ROUNDS:-3}               # measured runs per row; the table shows medians
CONCURRENCY=${CONCURRENCY:-64}    # tcp-conn: clients, each one connection at a time
CONN_BYTES=${CONN_BYTES:-16}      # tcp-conn: bytes sent and echoed per connection
UDP_CLIENTS=${UDP_CLIENTS:-64}    # udp: client sockets (= sessions in the proxy)
UDP_WINDOW=${UDP_WINDOW:-2}       # udp: datagrams in flight per client
UDP_BYTES=${UDP_BYTES:-64}        # udp: datagram payload
PROXY_CPU=${PROXY_CPU:-0}         # core for the proxy under test
LOAD_CPU=${LOAD_CPU:-1}           # core for the load and the upstreams
CARGO_LOCK=/tmp/raftgate-cargo.lock
# Hold the cargo lock while measuring, so builds and tests that take it wait instead of
# competing for the two cores. 0 to measure without it.
HOLD_CARGO_LOCK=${HOLD_CARGO_LOCK:-1}
LOCK_WAIT=${LOCK_WAIT:-900}       # seconds to wait for it before measuring without it
LOCK_FD=""

# Upstreams (core 1).
UP_STREAM=18100 UP_ECHO=18101 UP_UDP=18102
# Proxies (core 0): stream (-> iperf3), echo (-> TCP echo), udp (-> UDP echo).
RG_HTTP=18110 RG_ADMIN=18111 RG_STREAM=18112 RG_ECHO=18113 RG_UDP=18114
NGX_STREAM=18120 NGX_ECHO=18121 NGX_UDP=18122 NGX_UDP_R1=18123
HAP_STREAM=18130 HAP_ECHO=18131 HAP_SPLICE=18132
TCP_PORTS=("$UP_STREAM" "$UP_ECHO" "$RG_HTTP" "$RG_ADMIN" "$RG_STREAM" "$RG_ECHO"
    "$NGX_STREAM" "$NGX_ECHO" "$HAP_STREAM" "$HAP_ECHO" "$HAP_SPLICE")
UDP_PORTS=("$UP_UDP" "$RG_UDP" "$NGX_UDP" "$NGX_UDP_R1")

# Which proxies and scenarios to run. "direct" is the load against the upstream itself,
# no proxy: the limit of this machine's loopback with the load and the upstream on one core.
read -ra PROXIES <<<"${PROXIES:-direct raftgate nginx haproxy}"
read -ra SCENARIOS <<<"${SCENARIOS:-tcp-stream tcp-conn udp}"

BENCH_NAME=l4 LOG_DIR=$OUT/l4-logs ERROR_LOGS=(nginx)
# shellcheck source=bench/lib.sh
source "$BENCH_DIR/lib.sh"

listening() { # port: true if something listens on 127.0.0.1:port (TCP), without connecting
    local hex
    hex=$(printf '%04X' "$1")
    awk -v a="0100007F:$hex" '$2 == a && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}

bound_udp() { # port: true if a UDP socket is bound to 127.0.0.1:port or 0.0.0.0:port
    local hex
    hex=$(printf '%04X' "$1")
    awk -v a="0100007F:$hex" -v b="00000000:$hex" '$2 == a || $2 == b { found = 1 } END { exit !found }' /proc/net/udp
}

wait_until() { # name what cmd...: poll cmd until it succeeds (150 x 0.1 s), failing if name exits
    local name=$1 what=$2
    shift 2
    local i
    for ((i = 0; i < 150; i++)); do
        alive "$name"
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    tail -n 20 "${LOGF[$name]}" >&2 || true
    die "$name: $what not ready within 15 s"
}

cpu_jiffies() { # cpu: "busy total user system softirq" jiffies of one core from /proc/stat
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6, t, $2 + $3, $4, $8 }' /proc/stat
}

cpu_pct() { # "busy0 total0 ..." "busy1 total1 ...": busy percent in between
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
        d = y[2] - x[2]; if (d > 0) printf "%.0f", 100 * (y[1] - x[1]) / d; else print "-" }'
}

cpu_split() { # "busy0 total0 user0 sys0 softirq0" "busy1 ...": "user X% sys Y% softirq Z%" in between
    awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2];
        if (d > 0) printf "user %.0f%%, system %.0f%%, softirq %.0f%%", 100 * (y[3] - x[3]) / d,
            100 * (y[4] - x[4]) / d, 100 * (y[5] - x[5]) / d }'
}


# ---------------------------------------------------------------------------------------------
# Tools

STREAM_MODULE=/usr/lib/nginx/modules/ngx_stream_module.so

nginx_has_stream() { # built in, or Debian's dynamic module installed
    local v
    v=$(nginx -V 2>&1) || return 1
    [[ $v == *"--with-stream "* || $v == *"--with-stream" ]] && return 0
    [[ $v == *"--with-stream=dynamic"* && -f $STREAM_MODULE ]]
}

ensure_tools() {
    local pkgs=()
    command -v iperf3 >/dev/null || pkgs+=(iperf3)
    command -v nginx >/dev/null || pkgs+=(nginx-light)
    command -v haproxy >/dev/null || pkgs+=(haproxy)
    command -v python3 >/dev/null || pkgs+=(python3)
    command -v curl >/dev/null || pkgs+=(curl)
    { command -v taskset && command -v flock && command -v pgrep; } >/dev/null || pkgs+=(util-linux procps)
    if ! command -v nginx >/dev/null || ! nginx_has_stream; then
        pkgs+=(libnginx-mod-stream)
    fi
    if ((${#pkgs[@]})); then
        apt_install "${pkgs[@]}"
    fi
    local tool
    for tool in iperf3 nginx haproxy python3 curl; do
        command -v "$tool" >/dev/null || die "$tool still missing after apt-get install"
    done
    nginx_has_stream || die "nginx has no stream module (Debian: libnginx-mod-stream)"
}

target_dir() { # manifest: cargo's target directory for it
    (cd "$REPO" && flock "$CARGO_LOCK" cargo metadata --format-version 1 --no-deps --manifest-path "$1" |
        grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)
}

build() {
    if [[ -z ${RAFTGATE_BIN:-} || -z ${LOADGEN_BIN:-} ]]; then
        command -v cargo >/dev/null || die "cargo not found"
    fi
    raftgate_binary
    if [[ -n ${LOADGEN_BIN:-} ]]; then
        log "using LOADGEN_BIN=$LOADGEN_BIN (no build)"
        LOADGEN=$LOADGEN_BIN
    else
        log "building the load generator (cargo build --release --manifest-path bench/loadgen/Cargo.toml)"
        (cd "$REPO" && flock "$CARGO_LOCK" cargo build --release --manifest-path bench/loadgen/Cargo.toml)
        LOADGEN=$(target_dir "$BENCH_DIR/loadgen/Cargo.toml")/release/l4load
    fi
    [[ -x $RAFTGATE_BIN ]] || die "no raftgate binary at $RAFTGATE_BIN"
    [[ -x $LOADGEN ]] || die "no load generator at $LOADGEN"
}

# ---------------------------------------------------------------------------------------------
# Servers

start_upstreams() {
    start iperf3-server "$LOAD_CPU" iperf3 -s -B 127.0.0.1 -p "$UP_STREAM"
    start tcp-echo "$LOAD_CPU" "$LOADGEN" tcp-echo "127.0.0.1:$UP_ECHO"
    start udp-echo "$LOAD_CPU" "$LOADGEN" udp-echo "127.0.0.1:$UP_UDP"
    wait_until iperf3-server "127.0.0.1:$UP_STREAM (listening)" listening "$UP_STREAM"
    wait_until tcp-echo "TCP echo on 127.0.0.1:$UP_ECHO" "$LOADGEN" probe-tcp "127.0.0.1:$UP_ECHO"
    wait_until udp-echo "UDP echo on 127.0.0.1:$UP_UDP" "$LOADGEN" probe-udp "127.0.0.1:$UP_UDP"
}

declare -A PORT=() # "scenario/proxy" -> port the load goes to

start_proxy() { # proxy: start it and wait until every port passes an echo (or listens)
    local p=$1
    case $p in
        direct)
            PORT[tcp-stream/$p]=$UP_STREAM PORT[tcp-conn/$p]=$UP_ECHO PORT[udp/$p]=$UP_UDP
            return
            ;;
        raftgate)
            mkdir -p "$RUN/manifests"
            cp "$BENCH_DIR"/l4/manifests/*.yaml "$RUN/manifests/"
            render "$BENCH_DIR/l4/raftgate.yaml" "$RUN/raftgate.yaml" MANIFESTS="$RUN/manifests"
            log "raftgate check:"
            "$RAFTGATE_BIN" check --config "$RUN/raftgate.yaml" | sed 's/^/    /' >&2 ||
                die "raftgate check rejected the bench config or manifests"
            start raftgate "$PROXY_CPU" "$RAFTGATE_BIN" run --config "$RUN/raftgate.yaml"
            wait_until raftgate "admin /readyz" curl -sf --max-time 1 "http://127.0.0.1:$RG_ADMIN/readyz"
            PORT[tcp-stream/$p]=$RG_STREAM PORT[tcp-conn/$p]=$RG_ECHO PORT[udp/$p]=$RG_UDP
            ;;
        nginx)
            mkdir -p "$RUN/nginx"
            local load_module="# stream is built in"
            [[ $(nginx -V 2>&1) == *"--with-stream=dynamic"* ]] && load_module="load_module $STREAM_MODULE;"
            render "$BENCH_DIR/l4/nginx.conf" "$RUN/nginx/nginx.conf" DIR="$RUN/nginx" LOAD_MODULE="$load_module"
            nginx -t -q -p "$RUN/nginx" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf" ||
                die "nginx -t rejected the config"
            start nginx "$PROXY_CPU" nginx -p "$RUN/nginx" -e "$RUN/nginx/error.log" -c "$RUN/nginx/nginx.conf"
            PORT[tcp-stream/$p]=$NGX_STREAM PORT[tcp-conn/$p]=$NGX_ECHO PORT[udp/$p]=$NGX_UDP
            PORT[udp/nginx-resp1]=$NGX_UDP_R1
            ;;
        haproxy)
            cp "$BENCH_DIR/l4/haproxy.cfg" "$RUN/haproxy.cfg"
            haproxy -c -q -f "$RUN/haproxy.cfg" || die "haproxy -c rejected the config"
            start haproxy "$PROXY_CPU" haproxy -db -f "$RUN/haproxy.cfg"
            PORT[tcp-stream/$p]=$HAP_STREAM PORT[tcp-conn/$p]=$HAP_ECHO
            PORT[tcp-stream/haproxy-splice]=$HAP_SPLICE
            wait_until "$p" "127.0.0.1:$HAP_SPLICE (listening)" listening "$HAP_SPLICE"
            ;;
    esac
    # An echo end to end through each port; the iperf3 port only listening (a probe
    # connection would reach the iperf3 server as a broken test).
    wait_until "$p" "127.0.0.1:${PORT[tcp-stream/$p]} (listening)" listening "${PORT[tcp-stream/$p]}"
    wait_until "$p" "echo through 127.0.0.1:${PORT[tcp-conn/$p]}" "$LOADGEN" probe-tcp "127.0.0.1:${PORT[tcp-conn/$p]}"
    if [[ -n ${PORT[udp/$p]:-} ]]; then
        wait_until "$p" "UDP echo through 127.0.0.1:${PORT[udp/$p]}" "$LOADGEN" probe-udp "127.0.0.1:${PORT[udp/$p]}"
    fi
    if [[ -n ${PORT[udp/nginx-resp1]:-} && $p == nginx ]]; then
        wait_until "$p" "UDP echo through 127.0.0.1:$NGX_UDP_R1" "$LOADGEN" probe-udp "127.0.0.1:$NGX_UDP_R1"
    fi
}

# ---------------------------------------------------------------------------------------------
# Measurement

# Results by "scenario/row"; a row is a proxy, nginx-resp1 (nginx's UDP as ingress-nginx
# configures it) or haproxy-splice (HAProxy with kernel splicing).
declare -A RATE=() P50=() P99=() ERRS=() ERR_DETAIL=() PCPU=() LCPU=() EXTRA=()

CMD=()
load_cmd() { # scenario port seconds json(0/1): set CMD to the load command line
    local s=$1 port=$2 secs=$3 json=$4
    case $s in
        tcp-stream)
            CMD=(iperf3 -c 127.0.0.1 -p "$port" -P 1 -t "$secs" --connect-timeout 3000)
            if ((json)); then CMD+=(-J); fi
            ;;
        tcp-conn)
            CMD=("$LOADGEN" tcp-conn "127.0.0.1:$port" --concurrency "$CONCURRENCY"
                --duration "$secs" --size "$CONN_BYTES")
            ;;
        udp)
            CMD=("$LOADGEN" udp "127.0.0.1:$port" --clients "$UDP_CLIENTS" --window "$UDP_WINDOW"
                --duration "$secs" --size "$UDP_BYTES")
            ;;
    esac
}

run_load() { # limit-seconds cmd...: run the load pinned to the load core, bounded in time
    local limit=$1
    shift
    if [[ -n $LOCK_FD ]]; then
        timeout -k 5 "$limit" taskset -c "$LOAD_CPU" "$@" {LOCK_FD}>&-
    else
        timeout -k 5 "$limit" taskset -c "$LOAD_CPU" "$@"
    fi
}

measure() { # scenario row port server round: warm-up, then one measured run
    local s=$1 row=$2 port=$3 server=$4 round=$5
    local raw=$OUT/l4-$s-$row-r$round.txt
    ((round > 1)) || ROWS+=("$s/$row")
    log "$s / $row (round $round of $ROUNDS): warm-up ${WARMUP}s, then ${DURATION}s (127.0.0.1:$port)"
    load_cmd "$s" "$port" "$WARMUP" 0
    run_load $((WARMUP + 30)) "${CMD[@]}" >"$OUT/l4-$s-$row-r$round.warmup.txt" 2>&1 ||
        die "$s / $row: warm-up failed: $(tail -n 3 "$OUT/l4-$s-$row-r$round.warmup.txt")"
    [[ $server == direct ]] || alive "$server"
    load_cmd "$s" "$port" "$DURATION" 1
    {
        echo "# $s / $row   $(date -Is)   load average: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "# taskset -c $LOAD_CPU ${CMD[*]}"
    } >"$raw"
    local p0 l0 p1 l1 rc=0
    p0=$(cpu_jiffies "$PROXY_CPU") l0=$(cpu_jiffies "$LOAD_CPU")
    run_load $((DURATION + 30)) "${CMD[@]}" >"$RUN/load.out" 2>"$RUN/load.err" || rc=$?
    p1=$(cpu_jiffies "$PROXY_CPU") l1=$(cpu_jiffies "$LOAD_CPU")
    cat "$RUN/load.out" "$RUN/load.err" >>"$raw"
    ((rc == 0)) || die "$s / $row: load failed (exit $rc); see $raw"
    [[ $server == direct ]] || alive "$server"
    PCPU[$s/$row]=$(cpu_pct "$p0" "$p1")
    LCPU[$s/$row]=$(cpu_pct "$l0" "$l1")
    {
        echo "# busy during the run: cpu$PROXY_CPU (proxy) ${PCPU[$s/$row]}%, cpu$LOAD_CPU (load + upstream) ${LCPU[$s/$row]}%"
        echo "#   cpu$PROXY_CPU: $(cpu_split "$p0" "$p1")"
        echo "#   cpu$LOAD_CPU: $(cpu_split "$l0" "$l1")"
    } >>"$raw"

    local parsed
    if [[ $s == tcp-stream ]]; then
        parsed=$(parse_iperf3 "$RUN/load.out")
    else
        parsed=$(parse_loadgen "$RUN/load.out")
    fi
    read -r "RATE[$s/$row]" "P50[$s/$row]" "P99[$s/$row]" "ERRS[$s/$row]" "ERR_DETAIL[$s/$row]" "EXTRA[$s/$row]" <<<"$parsed"
    [[ ${RATE[$s/$row]} != - ]] || die "could not parse the output of $s / $row: $raw"
    log "  $(fmt_rate "$s" "${RATE[$s/$row]}") $(unit "$s"), errors ${ERRS[$s/$row]} (${ERR_DETAIL[$s/$row]}), cpu ${PCPU[$s/$row]}%/${LCPU[$s/$row]}%"
    local k=$s/$row
    record_round "$k" "$round" "${RATE[$k]}" "${P50[$k]}" "${P99[$k]}" "${PCPU[$k]}" "${LCPU[$k]}" "${ERRS[$k]}" "${ERR_DETAIL[$k]}"
}


# iperf3 -J: "rate p50 p99 errors detail extra", rate in bytes/s received by the server.
parse_iperf3() {
    python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print("- - - - - -"); sys.exit()
if "error" in d:
    print("- - - 1 iperf3:%s -" % d["error"].replace(" ", "_")); sys.exit()
r = d["end"]["sum_received"]
s = d["end"]["sum_sent"]
print("%.0f - - 0 - retransmits=%d,bytes=%d" % (r["bits_per_second"] / 8, s.get("retransmits", 0), r["bytes"]))
' <"$1"
}

# l4load's RESULT line: "rate p50_ms p99_ms errors detail extra".
parse_loadgen() {
    awk '/^RESULT / {
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        extra = (v["sent"] != "") ? "sent=" v["sent"] ",late=" v["late"] : "-"
        printf "%s %.3f %.3f %d %s %s\n", v["rate"], v["p50_us"] / 1000, v["p99_us"] / 1000, v["errors"], v["detail"], extra
        found = 1
    } END { if (!found) print "- - - - - -" }' "$1"
}

unit() {
    case $1 in
        tcp-stream) echo "GB/s" ;;
        tcp-conn) echo "conn/s" ;;
        udp) echo "replies/s" ;;
    esac
}

fmt_rate() { # scenario rate
    if [[ $1 == tcp-stream ]]; then
        awk -v r="$2" 'BEGIN { printf "%.2f", r / 1e9 }'
    else
        awk -v r="$2" 'BEGIN { printf "%.0f", r }'
    fi
}

cost() { # scenario rate cpu%: the proxy core's busy time per operation
    awk -v s="$1" -v r="$2" -v c="$3" 'BEGIN {
        if (r <= 0 || c == "-") { print "-"; exit }
        if (s == "tcp-stream") printf "%.0f ms/GB", 1000 * (c / 100) / (r / 1e9)
        else printf "%.1f us", 1e6 * (c / 100) / r }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.2fx", a / b; else print "-" }'; }
pct_of() { awk -v a="$1" -v b="$2" 'BEGIN { if (a != "" && b > 0) printf "%.0f%%", 100 * a / b; else print "-" }'; }

ROWS=() # "scenario/row" in measuring order

print_table() {
    printf '%-10s %-14s %7s %-9s %8s %8s %6s %5s %5s %10s %9s  %s\n' \
        scenario proxy rate unit 'p50(ms)' 'p99(ms)' errors "cpu$PROXY_CPU%" "cpu$LOAD_CPU%" "cpu$PROXY_CPU/op" 'of direct' 'raftgate/peer'
    local s row key r d p50 p99 c
    for s in "${SCENARIOS[@]}"; do
        for key in "${ROWS[@]}"; do
            [[ ${key%%/*} == "$s" ]] || continue
            row=${key#*/}
            if [[ ${RATE[$key]:-} == n/a ]]; then
                printf '%-10s %-14s %7s %-9s  %s\n' "$s" "$row" n/a "" "${ERR_DETAIL[$key]}"
                continue
            fi
            r=""
            case $row in
                direct | raftgate) ;;
                *) r=$(ratio "${RATE[$s/raftgate]:-}" "${RATE[$key]}") ;;
            esac
            d=-
            [[ $row == direct ]] || d=$(pct_of "${RATE[$key]}" "${RATE[$s/direct]:-}")
            p50=${P50[$key]} p99=${P99[$key]} c=-
            [[ $row == direct ]] || c=$(cost "$s" "${RATE[$key]}" "${PCPU[$key]}")
            printf '%-10s %-14s %7s %-9s %8s %8s %6s %5s %5s %10s %9s  %s\n' \
                "$s" "$row" "$(fmt_rate "$s" "${RATE[$key]}")" "$(unit "$s")" "$p50" "$p99" \
                "${ERRS[$key]}" "${PCPU[$key]}" "${LCPU[$key]}" "$c" "$d" "$r"
        done
    done
    local any=0
    for key in "${ROWS[@]}"; do
        if [[ ${RATE[$key]} != n/a && (${ERR_DETAIL[$key]} != - || ${EXTRA[$key]:--} != -) ]]; then
            ((any++)) || echo
            echo "$key: errors ${ERR_DETAIL[$key]}; ${EXTRA[$key]:--}"
        fi
    done
    local bound=()
    for key in "${ROWS[@]}"; do
        [[ ${RATE[$key]} != n/a && ${LCPU[$key]} != - && ${LCPU[$key]} -ge 95 && ${key#*/} != direct ]] && bound+=("$key")
    done
    if ((${#bound[@]})); then
        echo
        echo "cpu$LOAD_CPU (load + upstream) was >= 95% busy in: ${bound[*]}"
        echo "  there the load generator bounds the rate as much as the proxy does: compare cpu$PROXY_CPU/op rather than the rate."
    fi
    echo
    echo "Proxy on cpu $PROXY_CPU; load and upstreams on cpu $LOAD_CPU; ${DURATION}s per run after a ${WARMUP}s warm-up;"
    echo "$ROUNDS round(s), each running every proxy in turn: rates, latencies and busy shares are medians, errors summed."
    echo "tcp-stream: one iperf3 TCP stream (iperf3 -P 1 -t $DURATION) through the proxy to an iperf3 server; GB/s = 10^9 bytes/s received."
    echo "tcp-conn:   $CONCURRENCY clients, each in a loop: connect, send $CONN_BYTES bytes, read the echo, close; p50/p99 per connection."
    echo "udp:        $UDP_CLIENTS client sockets x $UDP_WINDOW datagrams in flight, $UDP_BYTES-byte payload, to a UDP echo; replies/s"
    echo "            (each reply = one datagram each way through the proxy); a reply not back in 200 ms counts as an error (timeout)."
    echo "nginx-resp1: nginx's UDP as ingress-nginx renders it (proxy_responses 1: a new upstream socket per answered datagram)."
    echo "haproxy-splice: HAProxy with option splice-auto (kernel splicing, off by default); raftgate splices a direction past 64 KiB."
    echo "of direct: this row's rate as a share of the same load run against the upstream without a proxy (the physical limit here:"
    echo "           load and upstream alone on cpu $LOAD_CPU). raftgate/peer: raftgate's rate divided by the row's (above 1.00x: raftgate is faster)."
    echo "cpu$PROXY_CPU% / cpu$LOAD_CPU% = how busy the proxy's core / the load + upstream core was; at ~100% on cpu$LOAD_CPU the load bounds the run."
    echo "cpu$PROXY_CPU/op: the proxy core's busy time per connection or reply (per GB for tcp-stream), lower is better: the fairer"
    echo "           comparison where cpu$LOAD_CPU is the limit. User/system/softirq split of each core: in the raw files."
    if ((ROUNDS > 1)); then
        echo "rate in each round:"
        local k
        for k in "${ROWS[@]}"; do
            [[ ${RATE[$k]} == n/a ]] || printf '  %-22s %s\n' "$k" "${S_RATE[$k]}"
        done
    fi
    echo "Raw output in bench/out/l4-*."
    if [[ -n $NOTE ]]; then echo "NOTE: $NOTE"; fi
}

# ---------------------------------------------------------------------------------------------

main() {
    [[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a whole number of seconds"
    [[ $WARMUP =~ ^[0-9]+$ && $WARMUP -gt 0 ]] || die "WARMUP must be a whole number of seconds above 0"
    [[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -gt 0 ]] || die "ROUNDS must be a whole number above 0"
    ensure_tools
    (($(nproc) >= 2)) || die "needs at least 2 CPUs (proxy on $PROXY_CPU, load on $LOAD_CPU)"
    local port
    for port in "${TCP_PORTS[@]}"; do
        ! listening "$port" || die "127.0.0.1:$port (TCP) is already in use"
    done
    for port in "${UDP_PORTS[@]}"; do
        ! bound_udp "$port" || die "127.0.0.1:$port (UDP) is already in use"
    done
    build

    hold_cargo_lock

    mkdir -p "$OUT"
    rm -rf "$OUT/l4-logs"
    rm -f "$OUT"/l4-*.txt
    RUN=$(mktemp -d /tmp/raftgate-bench-l4.XXXXXX)
    chmod 755 "$RUN" # nginx workers may run as nobody
    start_upstreams

    # Rounds interleave the proxies, so that a slow spell of the machine does not land on
    # one proxy only.
    local p s round
    for ((round = 1; round <= ROUNDS; round++)); do
        for p in "${PROXIES[@]}"; do
            start_proxy "$p"
            for s in "${SCENARIOS[@]}"; do
                if [[ $s == udp && $p == haproxy ]]; then
                    ((round > 1)) || ROWS+=("$s/$p")
                    RATE[$s/$p]=n/a
                    ERR_DETAIL[$s/$p]="HAProxy has no UDP proxying (mode tcp/http only)"
                    continue
                fi
                measure "$s" "$p" "${PORT[$s/$p]}" "$p" "$round"
                if [[ $s == udp && $p == nginx ]]; then
                    measure "$s" nginx-resp1 "${PORT[udp/nginx-resp1]}" nginx "$round"
                fi
                if [[ $s == tcp-stream && $p == haproxy ]]; then
                    measure "$s" haproxy-splice "${PORT[tcp-stream/haproxy-splice]}" haproxy "$round"
                fi
            done
            if [[ $p == raftgate ]]; then
                curl -s "http://127.0.0.1:$RG_ADMIN/metrics" >"$OUT/l4-raftgate-metrics.txt" || true
            fi
            [[ $p == direct ]] || stop "$p"
        done
    done
    summarize RATE

    {
        echo "raftgate L4 bench  $(date -Is)  $(uname -srm)  $(nproc) cpus: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
        echo "raftgate $("$RAFTGATE_BIN" --version | awk '{print $2}') ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'); $RAFTGATE_BUILD), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(iperf3 -v | head -1 | cut -d' ' -f1-2)"
        echo
        print_table
    } | tee "$OUT/l4-results.txt"
}

main "$@"
