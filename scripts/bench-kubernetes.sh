#!/usr/bin/env bash
# Kubernetes driver benchmarks on the test cluster of scripts/cluster.sh
# (figures go into README.md). Not part of the test suite: timings depend on
# the machine, and each line prints the load average it ran under. Run as
# root, after `scripts/cluster.sh up`.
#
#   scripts/bench-kubernetes.sh [WORKDIR]       # default target/bench-kubernetes
#
# 1. first use: `kubectl build` with no builder in the namespace, to the
#    first step running (the progress line of its RUN step): creating the
#    default builder buildkit, its pod ready, the exec connection, the
#    context sent; then to the end of the build.
# 2. warm rebuild: the same Dockerfile again, nothing changed (every step
#    cached), through the cluster vs the embedded builder (--builder local).
# 3. examples/hello, the seven-platform cross-compiling Dockerfile, cold
#    (--no-cache, an empty GOCACHE) through a builder of 1 pod vs a builder
#    of 2 pods (replicas=2), the result kept in the pods' stores
#    (-o type=image). The Go image comes from a registry the pods reach.
#
# The restricted user of the test cluster runs everything, in its
# namespace. KBUILD_BENCH_BIN: the binary (default target/debug/kubectl-build,
# also the builder image's binary, stripped). KBUILD_BENCH_RUNS: runs of each
# measurement of 2. and 3. (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
checkout=$PWD
work=${1:-target/bench-kubernetes}
mkdir -p "$work"
work=$(cd "$work" && pwd)
K=${KBUILD_BENCH_BIN:-$PWD/target/debug/kubectl-build}
runs=${KBUILD_BENCH_RUNS:-2}
C=$checkout/target/cluster
[[ -x $K ]] || { echo "error: $K not found: build it (cargo build)" >&2; exit 1; }
[[ -s $C/registry ]] || { echo "error: no test cluster: run scripts/cluster.sh up" >&2; exit 1; }
kubectl() { "$C/bin/kubectl" --kubeconfig "$C/admin.kubeconfig" --request-timeout=60s "$@"; }
ns=kbuild-test

export KUBECONFIG=$C/user.kubeconfig
export XDG_CONFIG_HOME=$work/config HOME=$work/home
rm -rf "$XDG_CONFIG_HOME"
mkdir -p "$HOME"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

builders=(buildkit kb-bench1 kb-bench2)
cleanup() {
    for b in "${builders[@]}"; do
        kubectl -n "$ns" delete deployments -l "kubectl-build.io/builder=$b" --wait=false >/dev/null 2>&1 || true
    done
    scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
}
trap cleanup EXIT

# A registry the pods reach (node 1's address), holding the bases.
ip=$(kubectl get node kbuild-node1 -o 'jsonpath={.status.addresses[?(@.type=="InternalIP")].address}')
reg=$(scripts/registry.sh start "$work/registry" "$ip:0")
fixtures=${KBUILD_FIXTURES_DIR:-$checkout/target/fixtures}
"$K" --root "$work/local" "$fixtures/busybox" --builder local --platform linux/amd64 \
    -t "$reg/bench/busybox:1" --push --insecure-registry "$reg" --progress quiet >/dev/null
golang_ctx=$(scripts/golang-image.sh "$work/golang")
"$K" --root "$work/local" "$golang_ctx" --builder local --platform linux/amd64 \
    -t "$reg/bench/golang:1.19" --push --insecure-registry "$reg" --progress quiet >/dev/null

# The builder image: this binary, stripped, pushed where the nodes pull from.
cp "$K" "$work/kubectl-build" && strip "$work/kubectl-build"
image_ctx=$(KUBECTL_BUILD_BINARY=$work/kubectl-build scripts/builder-pod-image.sh "$work/builder-image")
export KUBECTL_BUILD_BUILDER_IMAGE=$(cat "$C/registry")/kubectl-build/builder:bench
"$K" --root "$work/local" "$image_ctx" --builder local -t "$KUBECTL_BUILD_BUILDER_IMAGE" \
    --push --progress quiet >/dev/null

ctx=$work/ctx
mkdir -p "$ctx"
printf 'bench\n' >"$ctx/f.txt"
printf 'FROM %s/bench/busybox:1\nCOPY f.txt /f.txt\nRUN echo first-step-running && cat /f.txt > /g.txt\n' "$reg" >"$ctx/Dockerfile"

# 1. First use, to the first step running.
kubectl -n "$ns" delete deployments -l kubectl-build.io/builder=buildkit --wait=true >/dev/null 2>&1 || true
kubectl -n "$ns" wait --for=delete pod -l kubectl-build.io/builder=buildkit --timeout=60s >/dev/null 2>&1 || true
echo "load average before: $(load)"
t0=$(now)
first=""
while IFS= read -r line; do
    printf '%s\n' "$line" >>"$work/first-use.log"
    if [[ -z $first && $line == *"RUN echo first-step-running"* ]]; then
        first=$(now)
    fi
done < <("$K" --root "$work/client" "$ctx" --platform linux/amd64 -t bench/app:1 -o type=image \
    --insecure-registry "$reg" --progress plain 2>&1)
t1=$(now)
grep -q 'creating builder buildkit' "$work/first-use.log" || { echo "error: the builder was not created: $work/first-use.log" >&2; exit 1; }
[[ -n $first ]] || { echo "error: no RUN step seen: $work/first-use.log" >&2; exit 1; }
echo "first use (no builder): first step running after $(secs "$t0" "$first") s, build done after $(secs "$t0" "$t1") s; load $(load)"

# 2. Warm rebuild: nothing changed, cluster vs embedded.
"$K" --root "$work/client" "$ctx" --builder local --platform linux/amd64 -t bench/app:1 -o type=image \
    --insecure-registry "$reg" --progress quiet >/dev/null
for r in $(seq "$runs"); do
    for b in buildkit local; do
        t0=$(now)
        "$K" --root "$work/client" "$ctx" --builder "$b" --platform linux/amd64 -t bench/app:1 -o type=image \
            --insecure-registry "$reg" --progress plain 2>"$work/warm-$b-$r.log"
        t1=$(now)
        grep -q CACHED "$work/warm-$b-$r.log" || { echo "error: not cached: $work/warm-$b-$r.log" >&2; exit 1; }
        echo "warm rebuild, builder $b (run $r): $(secs "$t0" "$t1") s; load $(load)"
    done
done

# 3. examples/hello cold, 7 platforms, 1 vs 2 pods.
"$K" create kb-bench1 --driver kubernetes >/dev/null
"$K" create kb-bench2 --driver kubernetes --driver-opt replicas=2 >/dev/null
"$K" ls
seven=linux/amd64,linux/386,linux/arm/v6,linux/arm/v7,linux/arm64,linux/ppc64le,linux/s390x
for r in $(seq "$runs"); do
    for b in kb-bench1 kb-bench2; do
        t0=$(now)
        "$K" --root "$work/client" examples/hello -f examples/hello/Dockerfile.cross --builder "$b" \
            --platform "$seven" --no-cache --build-arg "GOLANG_IMAGE=$reg/bench/golang:1.19" \
            --insecure-registry "$reg" -t bench/hello:1 -o type=image \
            --progress plain 2>"$work/cross-$b-$r.log"
        t1=$(now)
        echo "examples/hello cold, 7 platforms, builder $b (run $r): $(secs "$t0" "$t1") s; $(grep -o "on builder $b in [0-9.]*s ([^)]*)" "$work/cross-$b-$r.log" | head -1 || true); load $(load)"
    done
done
echo "load average after: $(load)"
