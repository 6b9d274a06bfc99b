#!/usr/bin/env bash
# Fault figures for README.md: pushes through kbuild-fault-proxy (random
# faults on closing PUTs, manifest PUTs, PATCH chunks, POSTs and HEADs, from
# random seeds) in front of a real docker-registry, each judged by reading the
# registry directly: complete and valid / failed with no tag / corrupt.
# Not part of the test suite. Needs docker-registry and skopeo (scripts/test.sh
# installs them).
#   scripts/faults.sh [RUNS]            (default 100)
#   KBUILD_FAULT_SEED=N scripts/faults.sh   repeats a run's seeds
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-100}
cargo build -q -p kbuild-testkit --bin kbuild-fault-proxy
KBUILD_FAULT_RUNS=$runs cargo test -q -p kbuild-registry --test faults -- \
    --ignored --exact random_fault_pushes --nocapture 2>&1 |
    grep -E '^(base seed|run |fault pushes:|test result|thread|  left|  right)'
