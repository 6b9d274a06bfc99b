#!/usr/bin/env bash
# End-to-end benchmarks of the release binary (figures go into README.md).
# Not part of the test suite: timings depend on the machine. Run as root.
#   scripts/bench.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench}
mkdir -p "$work"
work=$(cd "$work" && pwd)
cargo build --release -p kubectl-build >/dev/null
K=${CARGO_TARGET_DIR:-$PWD/target}/release/kubectl-build

section() { printf '\n== %s\n' "$*"; }

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
if [[ ! -f $big/.done-$size_mb ]]; then
    rm -rf "$big"
    python3 - "$big" "$size_mb" <<'PY'
import os, sys
root, mb = sys.argv[1], int(sys.argv[2])
n = 20000
per = mb * 1024 * 1024 // n
os.makedirs(root, exist_ok=True)
for i in range(n):
    d = f"{root}/data/d{i // 100}"
    os.makedirs(d, exist_ok=True)
    # Compressible but not trivial: text-like pseudo-random content.
    with open(f"{d}/f{i}.txt", "wb") as fh:
        fh.write((f"{i:08d} " * 7 + "\n").encode() * (per // 72) + os.urandom(per // 8))
open(f"{root}/Dockerfile", "w").write("FROM scratch\nCOPY data /data\n")
open(f"{root}/.done-{mb}", "w").close()
PY
fi
rm -rf "$work/storebig"
/usr/bin/time -f "export: %e s wall, %M KB max RSS" "$K" --root "$work/storebig" "$big" --platform linux/amd64 --progress quiet >/dev/null
tar -cf - -C "$big" data | /usr/bin/time -f "gzip -6 of the same tar: %e s wall" gzip -6 >/dev/null
