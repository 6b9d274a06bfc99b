#!/usr/bin/env python3
"""Runs a command and prints what the benchmarks report of it, on one line:

    LABEL: 12.34 s wall, CPU/wall 1.82, 1050.3 MB read, 41.2 MB peak RSS

"read" is the bytes the process (all its threads) asked read(2) and friends
for, from /proc/PID/io (rchar), taken after it exited and before it is
reaped, so cached files count too: it measures how often the tool reads its
inputs, not the disk. Child processes (the RUN sandbox) are not included.

With MEASURE_PER_BYTES=N in the environment (N > 0, e.g. the size of a
build context), the line also gives the bytes read per one of those N bytes.
With MEASURE_JSON=FILE, the figures are also written to FILE as JSON
(wall_s, cpu_s, rchar, maxrss_kb, exit), for a script to go on with.
With MEASURE_THREADS=1, a second line gives the CPU seconds (user+system)
of the process's busiest threads, sampled from /proc/PID/task every 50 ms
(a thread's last sample before it ended counts), by thread name: the
busiest one is the critical path the CPU/wall figure cannot beat.

usage: scripts/measure.py LABEL COMMAND [ARG...]
"""
import json
import os
import resource
import subprocess
import sys
import threading
import time


def sample_threads(pid: int, threads: dict) -> None:
    """Records each thread's name and CPU ticks (user + system) so far."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # The name is in parentheses and may hold spaces.
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        threads[int(tid)] = (name, int(fields[11]) + int(fields[12]))


def main() -> int:
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    label, argv = sys.argv[1], sys.argv[2:]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    threads = {}
    sampler = None
    exited = threading.Event()
    if os.environ.get("MEASURE_THREADS") == "1":
        # Sampled on a thread of its own, so that the exit is seen when it
        # happens rather than at the next sample (the process is not reaped
        # before the sampling stops, so its PID stays its own).
        def sample() -> None:
            while not exited.is_set():
                sample_threads(proc.pid, threads)
                exited.wait(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
    # Wait for the exit without reaping, so /proc/PID/io is still there.
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    wall = time.monotonic() - start
    exited.set()
    if sampler is not None:
        sampler.join()
    rchar = 0
    try:
        with open(f"/proc/{proc.pid}/io") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key == "rchar":
                    rchar = int(value)
    except OSError as e:
        print(f"{label}: cannot read /proc/{proc.pid}/io: {e}", file=sys.stderr)
    _, status, usage = os.wait4(proc.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    code = os.waitstatus_to_exitcode(status)
    per = int(os.environ.get("MEASURE_PER_BYTES") or 0)
    print(
        f"{label}: {wall:.2f} s wall, CPU/wall {cpu / wall if wall else 0:.2f}, "
        f"{rchar / 1e6:.1f} MB read"
        + (f" ({rchar / per:.2f} bytes per context byte)" if per > 0 else "")
        + f", {usage.ru_maxrss / 1024:.1f} MB peak RSS"
        + ("" if code == 0 else f", exit {code}")
    )
    if threads:
        tick = os.sysconf("SC_CLK_TCK")
        busiest = sorted(threads.items(), key=lambda t: -t[1][1])[:8]
        print(
            "  threads (CPU s): "
            + ", ".join(f"{name}[{tid}] {ticks / tick:.2f}" for tid, (name, ticks) in busiest)
        )
    out = os.environ.get("MEASURE_JSON")
    if out:
        with open(out, "w") as fh:
            json.dump(
                {
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "rchar": rchar,
                    "maxrss_kb": usage.ru_maxrss,
                    "exit": code,
                },
                fh,
            )
    return code


if __name__ == "__main__":
    sys.exit(main())
