#!/usr/bin/env python3
"""Checks the kept/excluded rows of cases.txt against a real `docker build`.

Not run by `cargo test`: it needs a Docker daemon. Usage, with a daemon
listening on DOCKER_HOST (any `dockerd` works; the docker CLI does the
.dockerignore filtering itself with the legacy builder):

    DOCKER_HOST=unix:///path/docker.sock python3 verify_with_docker.py [cases.txt]

A private daemon is enough, for example (as root):

    dockerd --data-root /tmp/d/data --exec-root /tmp/d/exec \
        -H unix:///tmp/d/docker.sock --pidfile /tmp/d/docker.pid \
        --bridge=none --iptables=false --ip6tables=false --storage-driver=vfs

Last run (docker CLI 28.2.2): every row agrees except the four marked in
cases.txt, where the legacy builder's directory skipping loses files that
BuildKit keeps.

For each case it builds a context holding every path of the case, builds
`FROM scratch` + `COPY . /` with that .dockerignore, exports the image's
files and compares. A directory row counts as kept when docker kept it or
anything below it. Rows for `error` cases only check that the build fails.
Prints the mismatches and a summary; exits 1 if any.
"""
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def read_cases(path):
    cases, in_file = [], False
    for line in open(path, encoding="utf-8").read().split("\n"):
        m = re.match(r"^\[(.*)\]$", line)
        if m and not in_file:
            cases.append({"name": m.group(1), "file": "", "checks": []})
            in_file = True
            continue
        if not cases:
            continue
        case = cases[-1]
        if in_file and line == "---":
            in_file = False
        elif in_file:
            for k, v in (("{sp}", " "), ("{tab}", "\t"), ("{cr}", "\r"), ("{bom}", "\ufeff")):
                line = line.replace(k, v)
            case["file"] += line + "\n"
        elif line.strip():
            op, _, arg = line.partition(" ")
            case["checks"].append((op, arg))
    return cases


def canonical(path):
    return bool(path) and not path.startswith(("./", "/")) and not path.endswith("/") \
        and "//" not in path and path != "."


def docker(*args, **kw):
    env = dict(os.environ, DOCKER_BUILDKIT="0")
    return subprocess.run(["docker", *args], env=env, capture_output=True, **kw)


def main():
    cases = read_cases(sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "cases.txt"))
    work = tempfile.mkdtemp(prefix="dockerignore-check-")
    dockerfile = os.path.join(work, "Dockerfile")
    with open(dockerfile, "w") as f:
        f.write("FROM scratch\nCOPY . /\n")
    bad = checked = 0
    for i, case in enumerate(cases):
        ctx = os.path.join(work, f"c{i}")
        os.makedirs(ctx)
        with open(os.path.join(ctx, ".dockerignore"), "w", encoding="utf-8") as f:
            f.write(case["file"])
        if any(op == "error" for op, _ in case["checks"]):
            r = docker("build", "-q", "-f", dockerfile, ctx, text=True)
            checked += 1
            if r.returncode == 0:
                bad += 1
                print(f"[{case['name']}] docker accepted the file")
            continue
        paths = [a for op, a in case["checks"] if op in "+-" and canonical(a)]
        if not paths:
            continue
        dirs = {"/".join(p.split("/")[:k]) for p in paths for k in range(1, p.count("/") + 1)}
        for p in paths:
            full = os.path.join(ctx, p)
            if p in dirs:
                os.makedirs(full, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, "w") as f:
                    f.write("x")
        r = docker("build", "-q", "-f", dockerfile, ctx, text=True)
        if r.returncode != 0:
            bad += 1
            print(f"[{case['name']}] build failed: {r.stderr.strip()[-300:]}")
            continue
        image = r.stdout.strip()
        container = docker("create", image, "x", text=True).stdout.strip()
        exported = docker("export", container).stdout
        docker("rm", container)
        docker("rmi", image)
        names = {n.rstrip("/") for n in tarfile.open(fileobj=io.BytesIO(exported)).getnames()}
        for op, path in case["checks"]:
            if op not in "+-" or not canonical(path):
                continue
            checked += 1
            present = path in names
            want = op == "+"
            if path in dirs:
                want = want or any(n.startswith(path + "/") for n in names)
            if present != want:
                bad += 1
                print(f"[{case['name']}] {op} {path}: docker kept it: {present}")
    shutil.rmtree(work, ignore_errors=True)
    print(f"{checked - bad} agree, {bad} differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
