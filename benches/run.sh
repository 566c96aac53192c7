#!/usr/bin/env bash
# Runs every Spot Guard benchmark in the bench profile and writes BENCHMARKS.md.
#
#   benches/run.sh
#
# Needs what the test suite needs (python3 -m moto.server, aws, and the control plane that
# testkit/control-plane/build.sh builds). The drain and watch-cache benchmarks run on that real
# control plane and take most of the time: about 40 minutes on two cores after the build.
# Raw output goes to target/benchmarks/*.log.
# `benches/run.sh --report` rewrites BENCHMARKS.md from the last run's logs without running;
# `benches/run.sh --only daemon` (or another name: safety, monitor, sim, drain, cache) runs that
# benchmark alone and rewrites BENCHMARKS.md, its section marked with its own commit and date.
# Environment: SPOTGUARD_BENCH_NOTICES (reaction latency notices, 50),
# SPOTGUARD_BENCH_IDLE_SECS (footprint window, 30), SPOTGUARD_BENCH_RUNS (drain runs, 3),
# SPOTGUARD_BENCH_CACHE_NODES (watch-cache sizes, 1000,5000), SPOTGUARD_BENCH_CACHE_LIMIT_MINUTES
# (the longest a watch-cache size may take to build, 15).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-$root/target}"
logs="$target/benchmarks"
mkdir -p "$logs"
short=(--warm-up-time 0.5 --measurement-time 2)
started=$(date -u +%s)

only=""
if [ "${1:-}" = "--only" ]; then
    only=${2:?"--only needs a benchmark name"}
fi

run() {
    local name=$1
    shift
    if [ -n "$only" ] && [ "$name" != "$only" ] && ! { [ "$name" = dist ] && [ "$only" = daemon ]; }; then
        return
    fi
    echo "== $name: $*" >&2
    git rev-parse --short HEAD >"$logs/$name.commit"
    date -u '+%Y-%m-%d %H:%M UTC' >"$logs/$name.date"
    "$@" >"$logs/$name.log" 2>"$logs/$name.err" || {
        echo "benchmark $name failed; see $logs/$name.log and $logs/$name.err" >&2
        tail -30 "$logs/$name.err" >&2
        exit 1
    }
}

# Each `cargo bench` builds its benchmark before it runs it, so compilation never overlaps a
# measurement.
if [ "${1:-}" != "--report" ]; then
run safety cargo bench -p spotguard-benches --bench safety -- "${short[@]}"
run monitor cargo bench -p spotguard-benches --bench monitor -- "${short[@]}"
run sim cargo bench -p spotguard-sim --bench sim -- "${short[@]}"
run drain cargo bench -p spotguard-k8s --bench drain
run cache cargo bench -p spotguard-k8s --bench cache
# The footprint is the shipped binary's: the `dist` profile the Dockerfile builds.
run dist cargo build --profile dist --locked -p spotguard-bin --bin spotguard
SPOTGUARD_BENCH_BIN="$target/dist/spotguard" run daemon cargo bench -p spotguard-bin --bench daemon
if [ -z "$only" ]; then
    rm -f "$logs/command"
    date -u +%s >"$logs/finished"
    echo "$started" >"$logs/started"
    date -u '+%Y-%m-%d %H:%M UTC' >"$logs/date"
    git rev-parse --short HEAD >"$logs/commit"
fi
fi

# Where a section was measured, when it was not with the rest.
measured() {
    if [ -f "$logs/$1.commit" ] && [ "$(cat "$logs/$1.commit")" != "$(cat "$logs/commit")" ]; then
        echo
        echo "Measured on its own: commit $(cat "$logs/$1.commit"), $(cat "$logs/$1.date")."
    fi
}

tables() { grep '^|' "$logs/$1.log"; }
# A benchmark's whole output, already markdown (tables and notes), without leading blank lines.
markdown() { sed '/./,$!d' "$logs/$1.log"; }

sim_table() {
    echo "| simulated cluster | time per simulated day (median) | simulated days per second |"
    echo "|---|---:|---:|"
    awk '
        function median(line,    inner, f) {
            inner = substr(line, index(line, "[") + 1)
            sub(/\].*/, "", inner)
            split(inner, f, " ")
            return f[3] " " f[4]
        }
        /^simulated day\/nodes\/[0-9]+/ { match($0, /nodes\/[0-9]+/); name = substr($0, RSTART + 6, RLENGTH - 6); t = "" }
        /time:/ && name != "" && t == "" { t = median($0) }
        /thrpt:/ && name != "" { d = median($0); sub(/ elem\/s/, "", d); printf "| %s nodes | %s | %s |\n", name, t, d; name = "" }
    ' "$logs/sim.log"
}

elapsed=$(( $(cat "$logs/finished") - $(cat "$logs/started") ))
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
ram=$(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)

{
    echo "# Spot Guard benchmarks"
    echo
    echo "Produced by \`benches/run.sh\` (all benchmarks: CPU-bound code in the bench profile, the"
    echo "daemon's footprint on the \`dist\` build that ships); do not edit by hand."
    echo
    echo "- date: $(cat "$logs/date")"
    echo "- machine: $(nproc) cores, $cpu, $ram RAM, $(uname -sr)"
    echo "- toolchain: $(rustc --version)"
    echo "- commit: $(cat "$logs/commit")"
    # How the last full report's runs were made, when not in one `benches/run.sh`.
    if [ -f "$logs/command" ]; then
        echo "- command: $(cat "$logs/command")"
    else
        echo "- command: \`benches/run.sh\` (took $((elapsed / 60)) min $((elapsed % 60)) s including the build)"
    fi
    echo
    echo "## Safety check at Kubernetes' published limits"
    echo
    echo "\`benches/benches/safety.rs\`: judge one candidate on-demand node, or all 50 candidates of"
    echo "a ledger (the per-snapshot index built once for them), on the \`ClusterView\` the adapters"
    echo "hand out (the watch cache and the simulator keep pods per node, so the view's pods come"
    echo "grouped and summed per node); the same decision on a snapshot whose pods come in no useful"
    echo "order (grouping 150,000 pods is then part of the cost); and the naive check (for each pod,"
    echo "scan every node) in the same run, with the ratio. Targets: one decision < 5 ms, 50"
    echo "decisions < 100 ms at 5,000 nodes, 150,000 pods, 1,000 PDBs; cost linear or better in the"
    echo "number of nodes."
    echo
    tables safety
    echo
    echo "## Monitor tick"
    echo
    echo "\`benches/benches/monitor.rs\`: the engine's monitor tick over in-memory ports, 50 active"
    echo "fallback entries, 50 spot and 50 on-demand groups, steady state (health, stability and"
    echo "safety evaluated for every entry; safety waits on a 99% capacity buffer, nothing mutated)."
    echo "Allocations counted by the global allocator (median tick)."
    echo
    tables monitor
    echo
    echo "## Watch cache at scale"
    echo
    echo "\`crates/spotguard-k8s/benches/cache.rs\`: the controller's watch cache (\`KubeCluster\`) on the"
    echo "real control plane of the test kit: Kubernetes v1.37.2 built from Go modules (etcd,"
    echo "kube-apiserver, controller manager, scheduler) with kwok playing the kubelets of the nodes, on"
    echo "this 2-core machine. 30 pods per node, bound with \`spec.nodeName\`, made Running by kwok and"
    echo "owned by ReplicaSets of 150 pods. A snapshot while nothing changed is the shared view; after"
    echo "any change the view is rebuilt from the cache (every pod copied once, grouped per node) before"
    echo "the monitor judges it: that rebuild, once per tick at most, is what a safety decision costs in"
    echo "a cluster that never stands still. The second table is what building the cluster took, with"
    echo "the API server's and etcd's resident memory then (VmRSS, peak VmHWM, from /proc); a size is"
    echo "attempted only when the rate measured before it says it takes under 15 minutes."
    echo
    markdown cache
    echo
    echo "## Reaction latency (real binary)"
    echo
    echo "\`crates/spotguard-bin/benches/daemon.rs\`: the shipped binary against the local IMDS server,"
    echo "moto behind the fault proxy and the real control plane; a rebalance notice appears at a"
    echo "random moment of the 2 s poll, and latency runs from the poll that first answered it (the"
    echo "moment the agent saw it) until the spot group's \`SetDesiredCapacity\` reaches the proxy."
    echo "Both ways in one run, a fresh process per notice: through the node (an agent with no cloud"
    echo "credentials marks its node; the leading controller, woken by its node watch, runs phase 1)"
    echo "and in-process (\`--role all\`: the agent hands the notice to its own controller, the way the"
    echo "agent ran phase 1 itself before the hand-over)."
    measured daemon
    echo
    tables daemon | sed -n '1,4p'
    echo
    grep '^Hand-over' "$logs/daemon.log" || true
    echo
    echo "## Footprint (real binary, idle)"
    echo
    echo "Same benchmark, on the binary that ships (\`cargo build --profile dist\`, as the Dockerfile"
    echo "builds it: fat LTO, one codegen unit, size-optimised), production timings (\`imds_poll\` 2s,"
    echo "\`monitor_interval\` 30s), the real control plane (Kubernetes v1.37.2) holding 1,000 kwok"
    echo "nodes and 30,000 pods, each process as its role's ServiceAccount. RSS is"
    echo "VmRSS at the end of the window; CPU is utime + stime over the window. Targets: agent"
    echo "< 16 MiB, controller < 64 MiB."
    echo
    tables daemon | sed -n '5,$p'
    echo
    echo "Resident memory by kind (heap and stacks, mapped binary and libraries), from the run's log:"
    echo
    echo '```'
    grep -E '^(daemon binary|agent|controller)[^|]*:' "$logs/daemon.err" || true
    echo '```'
    echo
    echo "## Simulator"
    echo
    echo "\`crates/spotguard-sim/benches/sim.rs\`: a busy simulated day (six rebalance waves)."
    echo
    sim_table
    echo
    echo "## Drain: Spot Guard vs kubectl drain"
    echo
    echo "\`crates/spotguard-k8s/benches/drain.rs\`: a full node (100 pods of 10 ReplicaSets, two of them"
    echo "with \`emptyDir\` storage, 9 DaemonSet pods and a mirror pod) drained by Spot Guard's"
    echo "\`Cluster::drain\` and by \`kubectl drain --ignore-daemonsets --delete-emptydir-data\` of the"
    echo "same release, on the real control plane of the test kit (Kubernetes v1.37.2 built from Go"
    echo "modules, kwok nodes) on this 2-core machine. Each drain gets a fresh, identical set-up (its"
    echo "own namespace, the node and four spare nodes for the replacements), the two tools alternate,"
    echo "and the median is reported. Every app pod takes 5 s to stop once evicted (kwok's pod-delete"
    echo "delay), so both tools wait for real deletions. The last column is the fewest Ready pods any"
    echo "app had during the drain, from a watch: with a 25% PDB per app neither tool may take an app"
    echo "below 7 of 10 (the bench fails if one does), so the drains compared are equally safe. Why"
    echo "kubectl takes longer, from its own defaults, follows the table."
    echo
    markdown drain
    if [ -f "$root/benches/NOTES.md" ]; then
        echo
        cat "$root/benches/NOTES.md"
    fi
} >"$root/BENCHMARKS.md"
echo "wrote $root/BENCHMARKS.md in $((elapsed / 60)) min $((elapsed % 60)) s" >&2
