#!/usr/bin/env bash
# Fan-out benchmarks (figures go into README.md). Not part of the test
# suite: timings depend on the machine. Run as root.
#
#   scripts/bench-fanout.sh [WORKDIR]
#
# 1. speed-up: examples/hello cross-compiled for seven platforms, cold
#    (--no-cache: the COPY and the seven `go build` steps run again, with an
#    empty GOCACHE), on a builder of one node vs a builder of two nodes; each
#    node is a `kubectl-build serve` in its own network namespace, pinned to
#    its own CPU with taskset (node 0 on CPU 0, node 1 on CPU 1), reached over
#    a unix socket; the result stays in the nodes' stores (-o type=image).
# (The remote overhead, first-time context transfer and daemon memory are
# measured by scripts/bench-remote.sh.)
#
# KBUILD_BENCH_BIN: the binary to measure (default: this tree's debug
# binary, target/debug/kubectl-build, built when missing). KBUILD_BENCH_RUNS:
# runs of each measurement (2).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-fanout}
mkdir -p "$work"
work=$(cd "$work" && pwd)
K=${KBUILD_BENCH_BIN:-$PWD/target/debug/kubectl-build}
if [[ ! -x $K ]]; then
    cargo build -p kubectl-build >/dev/null
fi
runs=${KBUILD_BENCH_RUNS:-2}
export XDG_CONFIG_HOME=$work/config
rm -rf "$XDG_CONFIG_HOME"

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    for n in 0 1; do ip netns del "kbb-$n" 2>/dev/null || true; done
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

for n in 0 1; do
    ip netns del "kbb-$n" 2>/dev/null || true
    ip netns add "kbb-$n"
    ip -n "kbb-$n" link set lo up
    rm -f "$work/node$n.sock"
    ip netns exec "kbb-$n" taskset -c "$n" "$K" --root "$work/node$n" serve \
        --addr "unix://$work/node$n.sock" 2>"$work/node$n.log" &
    pids+=($!)
done
for n in 0 1; do
    for _ in $(seq 100); do [[ -S $work/node$n.sock ]] && break; sleep 0.1; done
    "$K" create "n$n" --endpoint "unix://$work/node$n.sock" >/dev/null
done
"$K" create one --endpoint "unix://$work/node0.sock" >/dev/null
"$K" create two --endpoint "unix://$work/node0.sock" >/dev/null
"$K" create two --append --endpoint "unix://$work/node1.sock" >/dev/null
"$K" ls

# The Go builder image in both nodes' stores.
golang_ctx=$(scripts/golang-image.sh "$work/golang")
for n in 0 1; do
    "$K" "$golang_ctx" --builder "n$n" --platform linux/amd64 \
        -t kbuild.local/golang:1.19 -o type=image --progress quiet >/dev/null
done

seven=linux/amd64,linux/386,linux/arm/v6,linux/arm/v7,linux/arm64,linux/ppc64le,linux/s390x
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq "$runs"); do
    for b in one two; do
        t0=$(now)
        "$K" examples/hello -f examples/hello/Dockerfile.cross --builder "$b" \
            --platform "$seven" --no-cache -t "bench/hello:$b" -o type=image \
            --progress plain 2>"$work/cross-$b-$r.log"
        echo "cross, 7 platforms, builder $b (run $r): $(since "$t0") s wall; load $(cut -d' ' -f1 /proc/loadavg); $(grep -c '→ node' "$work/cross-$b-$r.log" || true) platforms assigned"
    done
done

echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
