#!/usr/bin/env bash
# Runs one libFuzzer target for a while, one job, with a 2 GiB RSS limit
# (figures go into README.md). Needs a nightly toolchain; cargo-fuzz is not
# needed: the coverage flags cargo-fuzz passes are given here directly.
#   scripts/fuzz.sh shell|dockerfile|ignore|platform [SECONDS]
# shell: crates/shell/fuzz (process_word); dockerfile: crates/dockerfile/fuzz
# (parse, which also plans); ignore: crates/ignore/fuzz (matcher: patterns and
# the walker's pruning rule); platform: crates/platform/fuzz (specifier: specifiers
# and lists round-trip). Corpus and crashes go under target/fuzz/.
set -euo pipefail
cd "$(dirname "$0")/.."
case ${1:-} in
shell) dir=crates/shell/fuzz bin=process_word ;;
dockerfile) dir=crates/dockerfile/fuzz bin=parse ;;
ignore) dir=crates/ignore/fuzz bin=matcher ;;
platform) dir=crates/platform/fuzz bin=specifier ;;
*) echo "usage: $0 shell|dockerfile|ignore|platform [SECONDS]" >&2; exit 2 ;;
esac
seconds=${2:-600}
triple=$(rustc -vV | sed -n 's/^host: //p')
work=$PWD/target/fuzz/$1
mkdir -p "$work/corpus" "$work/artifacts"
export CARGO_TARGET_DIR=$PWD/target/fuzz/build
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# An explicit --target keeps the flags away from build scripts.
(cd "$dir" && cargo +nightly build --release --target "$triple" --bin "$bin")
if [[ $1 == dockerfile ]]; then
    for d in crates/dockerfile/tests/plan/*/; do
        cp "$d/Dockerfile" "$work/corpus/$(basename "$d")"
    done
fi
exec "$CARGO_TARGET_DIR/$triple/release/$bin" -rss_limit_mb=2048 \
    -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$work/artifacts/" "$work/corpus"
