#!/usr/bin/env bash
# The chaos drill: runs both seeded fault mixes for many seeds, and every named scenario a few
# times, and prints the summary table.
# Root only (network namespaces). Usage: scripts/drill.sh [RUNS] [STEPS] [FIRST_SEED] [SCENARIO_RUNS]
#   RUNS           how many seeds of each mix (default 20)
#   STEPS          faults per run of the mix (default 4)
#   FIRST_SEED     the first seed; the others follow it (default: from the clock, printed)
#   SCENARIO_RUNS  runs of each named scenario (default 3; 0 skips them)
# A failing run prints its seed; rerun it alone with
#   CHAOS_SEED=<seed> CHAOS_STEPS=<steps> cargo test -p raftgate-chaos-tests --test vip_failover a_seeded_fault_mix -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-20}
steps=${2:-4}
first=${3:-$(date +%s)}
scenario_runs=${4:-3}
if [ "$(id -u)" != 0 ]; then
    echo "the drill builds network namespaces: run it as root" >&2
    exit 2
fi
out=$(mktemp -d /tmp/raftgate-drill.XXXXXX)
results="$out/results.jsonl"
echo "drill: $runs runs of $steps faults, seeds $first..$((first + runs - 1)); logs in $out"
cargo build -q -p raftgate -p raftgate-chaos-tests --bins
cargo test -q -p raftgate-chaos-tests --test vip_failover --no-run
# Each seed twice: the mix of node, network and disk faults on a manifests-fed group, and the
# mix of every fault (API server and clock ones too) on a group fed by the test API server.
# run LABEL LOG TEST [VAR=VALUE...]: one test of vip_failover, its result line, its output in LOG.
run() {
    local label=$1 log=$2 name=$3
    shift 3
    if env "$@" CHAOS_RESULTS="$results" \
        cargo test -q -p raftgate-chaos-tests --test vip_failover "$name" -- --exact --nocapture > "$log" 2>&1; then
        echo "$label: ok"
    else
        echo "$label: FAILED (see $log)"
    fi
}
for mix in a_seeded_fault_mix_keeps_every_invariant a_seeded_kubernetes_fault_mix_keeps_every_invariant; do
    for i in $(seq 0 $((runs - 1))); do
        seed=$((first + i))
        run "$mix seed $seed" "$out/$mix-$seed.log" "$mix" CHAOS_SEED=$seed CHAOS_STEPS=$steps
    done
done
# Every named scenario: the tests called scenario_*, as the test binary lists them.
scenarios=$(cargo test -q -p raftgate-chaos-tests --test vip_failover -- --list 2>/dev/null |
    sed -n 's/^\(scenario_[a-z0-9_]*\): test$/\1/p')
if [ -z "$scenarios" ]; then
    echo "no scenario_* test listed" >&2
    exit 1
fi
for i in $(seq 1 "$scenario_runs"); do
    for name in $scenarios; do
        run "$name run $i" "$out/$name-$i.log" "$name"
    done
done
echo
target/debug/raftgate-chaos-summary "$results"
