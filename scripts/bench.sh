#!/usr/bin/env bash
# End-to-end benchmarks of the release binary (figures go into README.md).
# Not part of the test suite: timings depend on the machine. Run as root.
#   scripts/bench.sh [WORKDIR]              the default set below
#   scripts/bench.sh large-copy [WORKDIR]   COPY of a 1 GiB / 20k-file context
#                                           (KBUILD_BENCH_MB to change the size),
#                                           pushed to a local registry: cold with
#                                           a fresh store, warm with nothing
#                                           changed, then one file changed, each
#                                           with gzip and zstd; every line gives
#                                           wall time, CPU/wall, bytes read and
#                                           peak RSS (scripts/measure.py); the wall
#                                           time runs from the start to the tag
#                                           (the command ends once the tag is put)
# Environment: KBUILD_BENCH_MB (context size), KBUILD_BENCH_LAYERS (large-copy:
# 2 copies the same files in two COPY steps), KBUILD_BENCH_COMPRESSION
# (large-copy: "gzip zstd" by default), KBUILD_BENCH_BIN (a kubectl-build
# binary to measure instead of building this tree's release binary, e.g. an
# older build for a before/after comparison).
set -euo pipefail
cd "$(dirname "$0")/.."
mode=default
if [[ ${1:-} == large-copy ]]; then
    mode=large-copy
    shift
fi
work=${1:-target/bench}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [[ -n ${KBUILD_BENCH_BIN:-} ]]; then
    K=$KBUILD_BENCH_BIN
else
    cargo build --release -p kubectl-build >/dev/null
    K=${CARGO_TARGET_DIR:-$PWD/target}/release/kubectl-build
fi

section() { printf '\n== %s\n' "$*"; }

# A context of $2 MiB in 20,000 files under $1/data, made once per size.
make_big_context() {
    scripts/bench-context.py "$1" "$2"
}

if [[ $mode == large-copy ]]; then
    size_mb=${KBUILD_BENCH_MB:-1024}
    big=$work/ctxbig
    make_big_context "$big" "$size_mb"
    # The racy-write rule of the checksum cache ignores files written in the
    # last 2 s; a fresh context must age a little first.
    sleep 3
    # A fresh registry: a blob left by an earlier run would not be uploaded.
    scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
    rm -rf "$work/registry"
    reg=$(scripts/registry.sh start "$work/registry")
    # KBUILD_BENCH_LAYERS=2: the same files in two COPY steps (d0-d99, then
    # d100-d199), so the first layer can upload while the second is made.
    dockerfile=$big/Dockerfile
    if [[ ${KBUILD_BENCH_LAYERS:-1} == 2 ]]; then
        dockerfile=$big/Dockerfile.layers2
        {
            echo "FROM scratch"
            echo "COPY $(printf 'data/d%d ' $(seq 0 99))/data/"
            echo "COPY $(printf 'data/d%d ' $(seq 100 199))/data/"
        } >"$dockerfile"
    fi
    trap 'scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true' EXIT
    for compression in ${KBUILD_BENCH_COMPRESSION:-gzip zstd}; do
        section "large COPY, ${size_mb} MiB in 20k files, ${KBUILD_BENCH_LAYERS:-1} layer(s), compression=$compression, pushed to $reg"
        store=$work/store-large-$compression
        rm -rf "$store"
        out="type=registry,name=$reg/bench/large:$compression,compression=$compression"
        run() { scripts/measure.py "$1" "$K" --root "$store" "$big" -f "$dockerfile" --platform linux/amd64 -o "$out" --progress quiet; }
        run "cold (fresh store)"
        run "warm (nothing changed)"
        victim=$big/data/d0/f0.txt
        cp "$victim" "$victim.orig"
        echo "changed $(date +%s%N)" >> "$victim"
        run "one file changed"
        mv "$victim.orig" "$victim"
    done
    tar -cf - -C "$big" data | /usr/bin/time -f "reference: gzip -6 of the same tar on one core: %e s wall" gzip -6 >/dev/null
    exit 0
fi

section "rebuild with nothing changed, 20k-file context"
ctx=$work/ctx20k
if [[ ! -d $ctx ]]; then
    python3 - "$ctx" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(200):
    os.makedirs(f"{root}/src/d{d}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/src/d{d}/f{f}.txt", "w") as fh:
            fh.write(f"file {d} {f}\n" * 20)
with open(f"{root}/Dockerfile", "w") as fh:
    fh.write("FROM scratch\nCOPY . /app\n")
PY
fi
rm -rf "$work/store20k"
"$K" --root "$work/store20k" "$ctx" --platform linux/amd64 --progress quiet >/dev/null
for i in 1 2 3; do
    /usr/bin/time -f "rebuild: %e s wall, %M KB max RSS" "$K" --root "$work/store20k" "$ctx" --platform linux/amd64 --progress quiet >/dev/null
done

section "export of a large COPY layer: time, peak RSS, and gzip -6 on the same bytes"
big=$work/ctxbig
size_mb=${KBUILD_BENCH_MB:-1000}
make_big_context "$big" "$size_mb"
rm -rf "$work/storebig"
/usr/bin/time -f "export: %e s wall, %M KB max RSS" "$K" --root "$work/storebig" "$big" --platform linux/amd64 --progress quiet >/dev/null
tar -cf - -C "$big" data | /usr/bin/time -f "gzip -6 of the same tar: %e s wall" gzip -6 >/dev/null
