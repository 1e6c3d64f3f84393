#!/usr/bin/env bash
# Instructions per proxied request, raftgate vs nginx vs HAProxy, counted by callgrind: see
# bench/README.md ("Instructions per request").
#
#   bench/instructions.sh             # 10 s of load per proxy
#   DURATION=5 bench/instructions.sh
#
# The same set-up as bench/run.sh's http1-keepalive scenario (it sources run.sh for it), but
# each proxy runs under `valgrind --tool=callgrind`. After a warm-up the counters are zeroed,
# wrk runs for DURATION seconds, and the counters are dumped: instructions / requests served.
# Unlike requests/s, the figure does not move with the rest of the machine's load; it counts
# user-space work only (the kernel's share is not in it).
set -euo pipefail

# shellcheck source=bench/run.sh
source "$(dirname "${BASH_SOURCE[0]}")/run.sh"
BENCH_NAME=instructions
LOG_DIR=$OUT/instructions-logs
SCENARIOS=(http1-keepalive)
# nginx as one process: its worker would change user and could no longer talk to callgrind.
NGINX_MASTER=off

declare -A IR=() REQS=()

ensure_valgrind() {
    command -v valgrind >/dev/null && command -v callgrind_control >/dev/null && return 0
    apt_install valgrind
}

count() { # proxy
    local p=$1 url
    url=http://127.0.0.1:${PORT_HTTP[$p]}/
    log "$p: warm-up ${WARMUP}s, then ${DURATION}s under callgrind ($url)"
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" -H 'Host: bench.local' "$url" >"$OUT/instructions-$p.warmup.txt"
    alive "$p"
    callgrind_control -z "${PID[$p]}" >/dev/null 2>&1 # (exits 0 even when it finds no such process)
    taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H 'Host: bench.local' "$url" >"$OUT/instructions-$p.txt"
    callgrind_control -d "${PID[$p]}" >/dev/null 2>&1 # (exits 0 even when it finds no such process)
    alive "$p"
    REQS[$p]=$(awk '/requests in/ { print $1 }' "$OUT/instructions-$p.txt")
    [[ ${REQS[$p]:-0} -gt 0 ]] || die "$p: wrk served no request (see $OUT/instructions-$p.txt)"
    # The dump (`.1`) holds what ran between the zero and the dump.
    IR[$p]=$(cat "$RUN"/cg/"$p".*.1 | awk '/^summary:/ { n += $2 } END { printf "%d", n }')
    [[ ${IR[$p]} -gt 0 ]] || die "$p: no callgrind counts in $RUN/cg/"
    cp "$RUN"/cg/"$p".*.1 "$OUT/" # for callgrind_annotate
    log "  ${REQS[$p]} requests, $((IR[$p] / REQS[$p])) instructions per request"
}

main_instructions() {
    [[ $DURATION =~ ^[0-9]+$ && $DURATION -gt 0 ]] || die "DURATION must be a whole number of seconds"
    ensure_valgrind
    preflight

    mkdir -p "$OUT"
    rm -rf "$LOG_DIR"
    rm -f "$OUT"/instructions-*.txt "$OUT"/{raftgate,nginx,haproxy}.*.1
    RUN=$(mktemp -d /tmp/raftgate-bench.XXXXXX)
    chmod 755 "$RUN"
    mkdir -p "$RUN/tls" "$RUN/cg"
    make_cert
    make_manifests
    start_upstream
    local p
    for p in "${PROXIES[@]}"; do
        WRAP=(valgrind --tool=callgrind --dump-instr=no "--callgrind-out-file=$RUN/cg/$p.%p")
        start_proxy "$p"
        count "$p"
        stop "$p"
    done

    {
        echo "raftgate instructions bench  $(date -Is)  $(uname -srm)"
        echo "raftgate $("$RAFTGATE_BIN" --version | awk '{print $2}') ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'); $RAFTGATE_BUILD), $(nginx -v 2>&1 | cut -d' ' -f3), $(haproxy -v | head -1 | cut -d' ' -f1-3), $(valgrind --version)"
        echo
        printf '%-9s %10s %16s  %s\n' proxy requests 'instructions/req' 'raftgate/peer'
        for p in "${PROXIES[@]}"; do
            local per=$((IR[$p] / REQS[$p])) r=""
            [[ $p == raftgate || -z ${IR[raftgate]:-} ]] ||
                r=$(awk -v a="${IR[raftgate]}" -v ra="${REQS[raftgate]}" -v b="${IR[$p]}" -v rb="${REQS[$p]}" \
                    'BEGIN { printf "%.2fx", (a / ra) / (b / rb) }')
            printf '%-9s %10d %16d  %s\n' "$p" "${REQS[$p]}" "$per" "$r"
        done
        echo
        echo "HTTP/1.1 keep-alive, wrk -t1 -c$CONNECTIONS -d${DURATION}s after ${WARMUP}s of warm-up, each proxy under callgrind on cpu $PROXY_CPU;"
        echo "instructions/req = user-space instructions executed by the proxy's processes per request (less is better;"
        echo "raftgate/peer above 1.00x: raftgate executes more). The kernel's work is not counted."
        echo "Dumps for callgrind_annotate in bench/out/<proxy>.<pid>.1."
        if [[ -n $NOTE ]]; then echo "NOTE: $NOTE"; fi
    } | tee "$OUT/instructions.txt"
}

main_instructions "$@"
