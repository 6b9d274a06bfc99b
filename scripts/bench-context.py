#!/usr/bin/env python3
"""The benchmarks' large context: ROOT/data holds FILES files (20000) of
MB MiB in all, 100 per directory, compressible but not trivial (text-like
lines plus random bytes); ROOT/Dockerfile copies them (COPY data /data).
Made once per size: ROOT/.done-MB-FILES marks a finished one.

    scripts/bench-context.py ROOT MB [FILES]
"""
import os
import shutil
import sys

root, mb = sys.argv[1], int(sys.argv[2])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 20000
done = f"{root}/.done-{mb}-{n}"
if os.path.exists(done):
    sys.exit(0)
shutil.rmtree(root, ignore_errors=True)
per = mb * 1024 * 1024 // n
os.makedirs(root, exist_ok=True)
for i in range(n):
    d = f"{root}/data/d{i // 100}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i}.txt", "wb") as fh:
        fh.write((f"{i:08d} " * 7 + "\n").encode() * (per // 72) + os.urandom(per // 8))
with open(f"{root}/Dockerfile", "w") as fh:
    fh.write("FROM scratch\nCOPY data /data\n")
open(done, "w").close()
