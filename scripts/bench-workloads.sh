#!/usr/bin/env bash
# Whole-build benchmarks of the three ways of building foreign platforms'
# everyday shapes, with the release binary (figures go into README.md):
#   gocross    examples/hello cross-compiled for 7 platforms (a
#              `FROM --platform=$BUILDPLATFORM` Go builder stage), warm (the
#              store has built it once); cold too (--no-cache, the base
#              images in the store) with KBUILD_BENCH_GOCROSS_COLD=1: that
#              one is mostly the Go compiler's time
#   emulated   `FROM busybox` + a shell loop in RUN for 4 foreign platforms
#              under QEMU, cold (--no-cache) and warm
# Each line gives wall time, CPU/wall and peak RSS of kubectl-build itself
# (scripts/measure.py; RUN steps' processes are not counted).
# Not part of the test suite: timings depend on the machine. Run as root.
#   scripts/bench-workloads.sh [WORKDIR]
# Environment: KBUILD_BENCH_BIN (a kubectl-build binary to measure instead
# of building this tree's release binary; several, separated by spaces, are
# measured in turn, alternating run by run, for before/after comparisons),
# KBUILD_BENCH_RUNS (runs of each line, 3 by default), KBUILD_BENCH_LOOP
# (iterations of the emulated RUN's loop, 100000 by default).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-workloads}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [[ -n ${KBUILD_BENCH_BIN:-} ]]; then
    read -r -a bins <<<"$KBUILD_BENCH_BIN"
else
    cargo build --release -p kubectl-build >/dev/null
    bins=("${CARGO_TARGET_DIR:-$PWD/target}/release/kubectl-build")
fi
runs=${KBUILD_BENCH_RUNS:-3}
loop=${KBUILD_BENCH_LOOP:-100000}
fixtures=${KBUILD_FIXTURES_DIR:-$PWD/target/fixtures}
if [[ ! -d $fixtures/busybox/amd64 ]]; then
    echo "error: $fixtures/busybox not found; run scripts/fixtures.sh" >&2
    exit 1
fi
seven=linux/amd64,linux/386,linux/arm/v6,linux/arm/v7,linux/arm64,linux/ppc64le,linux/s390x
foreign=linux/arm64,linux/arm/v7,linux/ppc64le,linux/s390x
golang_ctx=$(scripts/golang-image.sh "$work/golang")

emulated=$work/emulated
mkdir -p "$emulated"
cat >"$emulated/Dockerfile" <<EOF
FROM kbuild.local/busybox:latest
RUN i=0; while [ \$i -lt $loop ]; do i=\$((i + 1)); done; echo \$i > /count
EOF

# A store per binary holding the two base images and one gocross build,
# made once per run of this script so every binary starts alike.
prepare() {
    local k=$1 store=$2
    rm -rf "$store"
    "$k" --root "$store" "$fixtures/busybox" --platform "$seven" \
        -t kbuild.local/busybox:latest -o type=image --progress quiet >/dev/null
    "$k" --root "$store" "$golang_ctx" --platform linux/amd64 \
        -t kbuild.local/golang:1.19 -o type=image --progress quiet >/dev/null
    "$k" --root "$store" examples/hello -f examples/hello/Dockerfile.cross \
        --platform "$seven" --progress quiet >/dev/null
}

measure() {
    local label=$1
    shift
    scripts/measure.py "$label" "$@" --progress quiet
}

for i in "${!bins[@]}"; do
    prepare "${bins[$i]}" "$work/store-$i"
done
echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
for run in $(seq 1 "$runs"); do
    for i in "${!bins[@]}"; do
        k=${bins[$i]}
        store=$work/store-$i
        name="[$i] run $run"
        if [[ ${KBUILD_BENCH_GOCROSS_COLD:-0} == 1 ]]; then
            measure "$name gocross cold (7 platforms)" "$k" --root "$store" examples/hello \
                -f examples/hello/Dockerfile.cross --platform "$seven" --no-cache
        fi
        measure "$name gocross warm (7 platforms)" "$k" --root "$store" examples/hello \
            -f examples/hello/Dockerfile.cross --platform "$seven"
        measure "$name emulated cold (4 platforms, $loop iterations)" "$k" --root "$store" \
            "$emulated" --platform "$foreign" --no-cache
        measure "$name emulated warm" "$k" --root "$store" "$emulated" --platform "$foreign"
    done
    echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
done
for i in "${!bins[@]}"; do
    echo "[$i] ${bins[$i]}"
    rm -rf "$work/store-$i"
done
