# Shared by bench/run.sh and bench/l4.sh: logging, and the processes a run starts, which are
# stopped on exit, failure included. Source it after setting OUT, BENCH_NAME, LOG_DIR (under
# OUT) and ERROR_LOGS (names of $RUN/<name>/error.log files to keep), and LOCK_FD if held.
# shellcheck shell=bash

log() { printf '[%s %s] %s\n' "$BENCH_NAME" "$(date +%T)" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Processes: everything started is recorded here and stopped on exit, failure included.

declare -A PID=()     # name -> pid
declare -A LOGF=()    # name -> log file
RUN=""                # temp dir for configs, certs, pid files, nginx temp paths, logs
NOTE=""               # a caveat printed under the table

stop() { # name: TERM the process (and, for nginx, its workers), KILL what is left after 5 s.
    local name=$1 pid=${PID[$1]:-}
    [[ -n $pid ]] || return 0
    local children comm
    children=$(pgrep -P "$pid" 2>/dev/null || true)
    comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) ignored SIGTERM for 5 s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    for c in $children; do # nginx workers, should the master have left them behind
        [[ $(cat "/proc/$c/comm" 2>/dev/null) == "$comm" ]] && kill -KILL "$c" 2>/dev/null
    done
    unset "PID[$name]"
}

# The script's own stdout and stderr: a trap can fire while a function's output is
# redirected to a file (run_load in measure), and cleanup must not write into that file.
exec {OUT_FD}>&1 {ERR_FD}>&2

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    exec 1>&"$OUT_FD" 2>&"$ERR_FD"
    local name
    for name in "${!PID[@]}"; do
        stop "$name"
    done
    if [[ -n $RUN && -d $RUN ]]; then
        mkdir -p "$LOG_DIR"
        for name in "${!LOGF[@]}"; do
            [[ -f ${LOGF[$name]} ]] && cp "${LOGF[$name]}" "$LOG_DIR/$name.log"
        done
        for name in "${ERROR_LOGS[@]}"; do
            [[ -f $RUN/$name/error.log ]] && cp "$RUN/$name/error.log" "$LOG_DIR/$name-error.log"
        done
        rm -rf "$RUN"
    fi
    if ((rc != 0)); then
        if [[ -d $LOG_DIR ]]; then
            log "failed (exit $rc); server logs are in $LOG_DIR/"
        else
            log "failed (exit $rc)"
        fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start() { # name cpu cmd...: start cmd pinned to cpu, in the background, logging to $RUN/name.log
    local name=$1 cpu=$2
    shift 2
    LOGF[$name]=$RUN/$name.log
    if [[ -n $LOCK_FD ]]; then
        # Servers must not inherit the lock: it goes when this script goes, whatever happens.
        taskset -c "$cpu" "$@" >"${LOGF[$name]}" 2>&1 {LOCK_FD}>&- &
    else
        taskset -c "$cpu" "$@" >"${LOGF[$name]}" 2>&1 &
    fi
    PID[$name]=$!
    log "started $name (pid ${PID[$name]}, cpu $cpu)"
}

alive() { # name: fail if the process has exited
    local name=$1
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
        tail -n 20 "${LOGF[$name]}" >&2 || true
        die "$name exited unexpectedly; log above"
    fi
}

render() { # template output key=value...: replace @key@ placeholders
    local tmpl=$1 out=$2
    shift 2
    local sed_args=() kv
    for kv in "$@"; do
        sed_args+=(-e "s|@${kv%%=*}@|${kv#*=}|g")
    done
    sed "${sed_args[@]}" "$tmpl" >"$out"
    if grep -q '@[A-Z_]*@' "$out"; then
        die "unfilled placeholder in $out: $(grep -o '@[A-Z_]*@' "$out" | head -1)"
    fi
}

# Takes the cargo lock (if HOLD_CARGO_LOCK) so builds and tests wait instead of competing for
# the cores while measuring; sets NOTE when measuring without it.
hold_cargo_lock() {
    if ((HOLD_CARGO_LOCK)); then
        log "waiting for $CARGO_LOCK (held while measuring; HOLD_CARGO_LOCK=0 to skip)"
        exec {LOCK_FD}>>"$CARGO_LOCK"
        # In the background, so that Ctrl-C is not held up until the lock comes.
        flock -w "$LOCK_WAIT" "$LOCK_FD" &
        PID[lock-wait]=$!
        if wait "${PID[lock-wait]}"; then
            log "got the lock"
        else
            log "warning: no lock after ${LOCK_WAIT}s; measuring while cargo may be running"
            exec {LOCK_FD}>&-
            LOCK_FD=""
            NOTE="measured WITHOUT the cargo lock: builds may have competed for the cores"
        fi
        unset 'PID[lock-wait]'
    else
        NOTE="measured without the cargo lock (HOLD_CARGO_LOCK=0): builds may have competed for the cores"
    fi
}

# ---------------------------------------------------------------------------------------------
# Rounds: each measured row collects one value per round; the tables show medians.

declare -A S_RATE=() S_P50=() S_P99=() S_ERRS=() S_DETAIL=() S_PCPU=() S_LCPU=()

# Adds one round's figures of row KEY (errors summed, error details tagged with the round).
record_round() { # key round rate p50 p99 busy_proxy_core busy_load_core errors detail
    local k=$1
    S_RATE[$k]+="$3 " S_P50[$k]+="$4 " S_P99[$k]+="$5 " S_PCPU[$k]+="$6 " S_LCPU[$k]+="$7 "
    S_ERRS[$k]=$((${S_ERRS[$k]:-0} + $8))
    [[ $9 == - ]] || S_DETAIL[$k]+="r$2:$9 "
}

# The median of a space-separated list of numbers; "-" when they are not numbers.
median() {
    local first=${1%% *}
    [[ $first =~ ^[0-9.]+$ ]] || { echo -; return; }
    tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g |
        awk '{ v[NR] = $1 }
            END {
                if (NR % 2) { print v[(NR + 1) / 2]; exit }
                m = sprintf("%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2)
                sub(/0+$/, "", m); sub(/\.$/, "", m); print m
            }'
}

# Replaces each row's figures with the medians over the rounds; RATE_ARRAY names the
# script's rate array (RPS or RATE). P50, P99, PCPU, LCPU, ERRS and ERR_DETAIL are shared names.
summarize() { # rate_array
    local -n rates=$1
    local k
    for k in "${!S_RATE[@]}"; do
        rates[$k]=$(median "${S_RATE[$k]}") P50[$k]=$(median "${S_P50[$k]}") P99[$k]=$(median "${S_P99[$k]}")
        PCPU[$k]=$(median "${S_PCPU[$k]}") LCPU[$k]=$(median "${S_LCPU[$k]}")
        ERRS[$k]=${S_ERRS[$k]} ERR_DETAIL[$k]=${S_DETAIL[$k]:--}
    done
}

# Installs Debian packages (as root, or through sudo).
apt_install() { # package...
    local sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || die "need root (or sudo) to install: $*"
        sudo=(sudo)
    fi
    log "installing $*"
    "${sudo[@]}" apt-get update
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y "$@"
}

# ---------------------------------------------------------------------------------------------
# The raftgate binary to measure: RAFTGATE_BIN if set; else built as BUILD says: `dist` (the
# default: scripts/build-pgo.sh, the profile-guided binary that ships) or `release` (a plain
# `cargo build --release`). Sets RAFTGATE_BIN and RAFTGATE_BUILD (printed with the results).
# Needs REPO and CARGO_LOCK.
raftgate_binary() {
    if [[ -n ${RAFTGATE_BIN:-} ]]; then
        log "using RAFTGATE_BIN=$RAFTGATE_BIN (no build)"
        RAFTGATE_BUILD="RAFTGATE_BIN"
        return
    fi
    command -v cargo >/dev/null || die "cargo not found"
    case ${BUILD:-dist} in
        dist)
            log "building the shipped binary: scripts/build-pgo.sh (profile-guided; 15-20 minutes on 2 cores)"
            "$REPO/scripts/build-pgo.sh" || die "scripts/build-pgo.sh failed"
            RAFTGATE_BIN=$REPO/target/dist/raftgate
            RAFTGATE_BUILD="dist profile + PGO"
            ;;
        release)
            log "building raftgate (cargo build --release -p raftgate, under $CARGO_LOCK)"
            (cd "$REPO" && flock "$CARGO_LOCK" cargo build --release -p raftgate)
            RAFTGATE_BIN=$(cd "$REPO" && flock "$CARGO_LOCK" cargo metadata --format-version 1 --no-deps |
                grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)/release/raftgate
            RAFTGATE_BUILD="release profile"
            ;;
        *) die "BUILD must be dist or release, not ${BUILD}" ;;
    esac
}
