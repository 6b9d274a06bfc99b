#!/usr/bin/env bash
# End-to-end benchmarks of the release binary (figures go into README.md).
# Not part of the test suite: timings depend on the machine. Run as root.
#   scripts/bench.sh [WORKDIR]              the default set below
#   scripts/bench.sh large-copy [WORKDIR]   FROM busybox + COPY . /data of a
#                                           1 GiB / 20k-file context, pushed to
#                                           a local registry: cold with a fresh
#                                           store, warm with nothing changed,
#                                           then one file changed, each with gzip
#                                           and zstd; every line gives wall time,
#                                           CPU/wall, bytes read (and per byte of
#                                           context) and peak RSS, then the CPU
#                                           seconds of the busiest threads
#                                           (scripts/measure.py); the wall time
#                                           runs from the start to the tag (the
#                                           command ends once the tag is put).
#                                           A cold line is followed by the new
#                                           layer blob's size and the bytes read
#                                           per byte of context without the
#                                           upload's one read of that blob
# Environment: KBUILD_BENCH_MB (context size; e.g. 256 for a quick run),
# KBUILD_BENCH_FILES (large-copy: number of files, 20000 by default; e.g. 5000),
# KBUILD_BENCH_BASE (large-copy: "busybox", the default, built from the
# busybox fixtures of scripts/fixtures.sh and pushed to the bench registry,
# or "scratch"), KBUILD_BENCH_RUNS (large-copy: how many times each cold
# build runs, each with a fresh store and registry; 1 by default),
# KBUILD_BENCH_LAYERS (large-copy: 2 copies the files in two COPY steps),
# KBUILD_BENCH_COMPRESSION (large-copy: "gzip zstd" by default),
# KBUILD_BENCH_FRESH_FS (large-copy: 1, the default, puts each cold run's
# store on an ext4 filesystem made for that run, an image file on a loop
# device under WORKDIR, so that no run times what earlier runs left behind;
# 0 keeps the stores on WORKDIR's own filesystem, as before),
# KBUILD_BENCH_DROP_CACHES (large-copy: 1 empties the page cache before
# each cold run, so the context is read from the disk: a context not read
# recently; by default each cold run starts with the whole context read
# into the page cache, since a kernel may reclaim pages of files not read
# for a while even with memory free, e.g. with DAMON-based reclaim, and
# a context partly on the disk is neither case),
# KBUILD_BENCH_BIN (a kubectl-build binary to measure instead of building
# this tree's release binary, e.g. an older build for a before/after
# comparison).
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

# A context of $2 MiB in $3 files (20,000 by default) under $1/data, made
# once per size (scripts/bench-context.py).
make_big_context() {
    scripts/bench-context.py "$1" "$2" "${3:-20000}"
}

if [[ $mode == large-copy ]]; then
    size_mb=${KBUILD_BENCH_MB:-1024}
    files=${KBUILD_BENCH_FILES:-20000}
    base=${KBUILD_BENCH_BASE:-busybox}
    big=$work/ctxbig
    make_big_context "$big" "$size_mb" "$files"
    ctx=$big/data
    ctx_bytes=$(find "$ctx" -type f -printf '%s\n' | awk '{s += $1} END {print s}')
    fixtures=${KBUILD_FIXTURES_DIR:-$PWD/target/fixtures}
    if [[ $base == busybox && ! -d $fixtures/busybox/amd64 ]]; then
        echo "error: $fixtures/busybox not found; run scripts/fixtures.sh (or KBUILD_BENCH_BASE=scratch)" >&2
        exit 1
    fi
    # The racy-write rule of the checksum cache ignores files written in the
    # last 2 s; a fresh context must age a little first.
    sleep 3
    # A fresh registry (a blob left by an earlier run would not be
    # uploaded), holding the base image when there is one.
    fresh_registry() {
        scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true
        rm -rf "$work/registry"
        reg=$(scripts/registry.sh start "$work/registry")
        if [[ $base == busybox ]]; then
            "$K" --root "$work/store-busybox" "$fixtures/busybox" --platform linux/amd64 \
                -o "type=registry,name=$reg/bench/busybox:latest" --progress quiet >/dev/null
        fi
    }
    dockerfile=$work/Dockerfile.large
    # KBUILD_BENCH_LAYERS=2: the files in two COPY steps (the first half of
    # the directories, then the second), so the first layer can upload while
    # the second is made.
    dirs=$(( (files + 99) / 100 ))
    # A fresh registry, the Dockerfile that names its base and the output.
    prepare() {
        fresh_registry
        local from=scratch
        if [[ $base == busybox ]]; then
            from=$reg/bench/busybox:latest
        fi
        if [[ ${KBUILD_BENCH_LAYERS:-1} == 2 ]]; then
            {
                echo "FROM $from"
                echo "COPY $(printf 'd%d ' $(seq 0 $((dirs / 2 - 1))))/data/"
                echo "COPY $(printf 'd%d ' $(seq $((dirs / 2)) $((dirs - 1))))/data/"
            } >"$dockerfile"
        else
            printf 'FROM %s\nCOPY . /data\n' "$from" >"$dockerfile"
        fi
        out="type=registry,name=$reg/bench/large:$compression,compression=$compression"
    }
    # Each cold run gets a store of its own: ext4 makes files slowly for
    # minutes after many were deleted (its inode allocator skips recently
    # deleted inodes one by one), so a store on a filesystem where an
    # earlier run's 20k files were just removed would time that instead.
    # With KBUILD_BENCH_FRESH_FS=1 (the default) the store is a new ext4
    # filesystem (an image on a loop device, made and mounted before the
    # clock starts, removed after the warm runs); otherwise a new
    # directory, and the stores are removed only at the end.
    fresh_fs=${KBUILD_BENCH_FRESH_FS:-1}
    fs_size_mb=$((size_mb * 3 + 2048))
    # Unmounts what a store holds (a build leaves nothing mounted, but a
    # failed one might) and the store's own filesystem, then removes both.
    drop_store() {
        local s=$1
        if mountpoint -q "$s"; then
            grep -o " $s/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
            umount "$s" || umount -l "$s"
        fi
        rm -rf "$s" "$s.img"
    }
    # An empty store for the next cold run at $store.
    new_store() {
        drop_store "$store"
        mkdir -p "$store"
        if [[ $fresh_fs == 1 ]]; then
            truncate -s "${fs_size_mb}M" "$store.img"
            # All inode tables written now rather than by a kernel thread
            # during the run; direct I/O, so the image's pages are not
            # cached (and copied) a second time; the loop device goes
            # away with the unmount.
            mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$store.img"
            local dev
            dev=$(losetup -f --show --direct-io=on "$store.img")
            mount "$dev" "$store"
            losetup -d "$dev"
        fi
    }
    drop_stores() {
        for s in "$work"/store-large-*; do
            [[ $s == *.img ]] || drop_store "$s"
        done
        rm -f "$work"/store-large-*.img
    }
    trap 'scripts/registry.sh stop "$work/registry" >/dev/null 2>&1 || true; drop_stores' EXIT
    drop_stores
    if [[ $fresh_fs == 1 ]]; then
        echo "each cold run's store: a fresh ext4 filesystem on a loop device (KBUILD_BENCH_FRESH_FS=0: a directory under $work)"
    else
        echo "each cold run's store: a new directory under $work, on a filesystem earlier runs may have left slow (KBUILD_BENCH_FRESH_FS=1 makes one per run)"
    fi
    for compression in ${KBUILD_BENCH_COMPRESSION:-gzip zstd}; do
        run() { MEASURE_THREADS=1 MEASURE_JSON=$work/measure.json MEASURE_PER_BYTES=$ctx_bytes scripts/measure.py "$1" "$K" --root "$store" "$ctx" -f "$dockerfile" --platform linux/amd64 -o "$out" --progress quiet; }
        # The bytes the last run read, split: the upload reads the new
        # layer's blob (the largest in the store) once; the rest is mostly
        # the context.
        split_reads() {
            local blob
            blob=$(find "$store/content/blobs/sha256" -type f -printf '%s\n' | sort -n | tail -1)
            python3 - "$work/measure.json" "${blob:-0}" "$ctx_bytes" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
blob, ctx = int(sys.argv[2]), int(sys.argv[3])
rest = m["rchar"] - blob
print(f"  layer blob {blob / 1e6:.1f} MB ({blob / ctx:.3f} per context byte, read once by the upload); "
      f"the rest: {rest / 1e6:.1f} MB read ({rest / ctx:.2f} bytes per context byte)")
PY
        }
        for i in $(seq 1 "${KBUILD_BENCH_RUNS:-1}"); do
            store=$work/store-large-$compression-$i
            new_store
            prepare
            if [[ $i == 1 ]]; then
                section "large COPY (FROM $base), ${size_mb} MiB ($ctx_bytes bytes) in $files files, ${KBUILD_BENCH_LAYERS:-1} layer(s), compression=$compression, pushed to a local registry"
            fi
            echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
            if [[ ${KBUILD_BENCH_DROP_CACHES:-0} == 1 ]]; then
                sync
                echo 1 >/proc/sys/vm/drop_caches
                run "cold $i (fresh store and registry, context not in the page cache)"
            else
                # The context in the page cache, and nothing of the new
                # store's making left to write back.
                find "$ctx" -type f -exec cat {} + >/dev/null
                sync
                run "cold $i (fresh store and registry)"
            fi
            split_reads
            # Only the last cold run's store is kept (for the warm runs):
            # each cold run then writes into memory the one before freed.
            # On a VM whose host takes back guest memory the guest leaves
            # alone (free page reporting, proactive reclaim), writing into
            # pages not touched for a while is much slower (the copy into
            # the page cache took up to 10 times as long), so a run after
            # stores that were kept measured that instead.
            if [[ $i -lt ${KBUILD_BENCH_RUNS:-1} ]]; then
                drop_store "$store"
            fi
        done
        echo "load average $(cut -d' ' -f1-3 /proc/loadavg)"
        run "warm (nothing changed)"
        victim=$ctx/d0/f0.txt
        cp "$victim" "$victim.orig"
        echo "changed $(date +%s%N)" >> "$victim"
        run "one file changed"
        mv "$victim.orig" "$victim"
        if [[ $fresh_fs == 1 ]]; then
            drop_stores
        fi
    done
    # The size too, for the layer blob's size above (the layer's tar is
    # the same files under the same names).
    ref_bytes=$(tar -cf - -C "$big" data | /usr/bin/time -f "%e" -o "$work/ref.time" gzip -6 | wc -c)
    echo "reference: gzip -6 of the same tar on one core: $(cat "$work/ref.time") s wall, $(awk -v b="$ref_bytes" 'BEGIN {printf "%.1f MB", b / 1e6}')"
    rm -f "$work/ref.time"
    drop_stores
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
