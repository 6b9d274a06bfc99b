#!/usr/bin/env bash
# Builds through a daemon on another host (figures go into README.md). Not
# part of the test suite: timings depend on the machine. Run as root.
#
#   scripts/bench-remote.sh [WORKDIR]
#
# The host is a network namespace (kbr-0) joined to this one by a veth pair
# (10.214.255.1 here, .2 there); its daemon listens on TCP with mutual TLS
# (a CA and certificates made with openssl) and has a store of its own. The
# context is KBUILD_BENCH_FILES files (20000) of KBUILD_BENCH_MB MiB (1024)
# in all (scripts/bench-context.py, as for scripts/bench.sh large-copy),
# built by `COPY data /data` into an image kept in the builder's store.
#
# 1. first-time context transfer: a daemon started afresh with an empty
#    store is sent the whole context; the time the daemon took to sync it
#    (from the session's start to the copy being ready, its own log line)
#    and the bytes give the throughput; the daemon's peak RSS (VmHWM) over
#    that build; the same files sent over a plain TCP connection to the
#    host (python's socket.sendfile, read and dropped there) for reference.
# 2. rebuild with nothing changed: through the daemon vs the embedded
#    builder, after a first build of each.
#
# Each measurement runs KBUILD_BENCH_RUNS times (3); the median is printed
# after the runs. KBUILD_BENCH_BIN: the binary to measure (default: the
# release binary, built when missing, in CARGO_TARGET_DIR or target/).
# KBUILD_BENCH_PARTS: which of them to run ("first rebuild", the default;
# "rebuild" alone skips the first-time transfers).
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-remote}
mkdir -p "$work"
work=$(cd "$work" && pwd)
if [[ -n ${KBUILD_BENCH_BIN:-} ]]; then
    K=$KBUILD_BENCH_BIN
else
    cargo build --release -p kubectl-build >/dev/null
    K=${CARGO_TARGET_DIR:-$PWD/target}/release/kubectl-build
fi
runs=${KBUILD_BENCH_RUNS:-3}
parts=${KBUILD_BENCH_PARTS:-first rebuild}
files=${KBUILD_BENCH_FILES:-20000}
mb=${KBUILD_BENCH_MB:-1024}
ns=kbr-0
here=10.214.255.1
there=10.214.255.2
port=7443
raw_port=7444
export XDG_CONFIG_HOME=$work/config
rm -rf "$XDG_CONFIG_HOME"

daemon=
cleanup() {
    [[ -n $daemon ]] && kill "$daemon" 2>/dev/null || true
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    ip link del "$ns" 2>/dev/null || true
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$(now)"; }
median() { python3 -c "import sys, statistics; print(f'{statistics.median(float(a) for a in sys.argv[1:]):.3f}')" "$@"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# The host.
cleanup
ip netns add "$ns"
ip link add "$ns" type veth peer name eth0 netns "$ns"
ip addr add "$here/30" dev "$ns"
ip link set "$ns" up
ip -n "$ns" addr add "$there/30" dev eth0
ip -n "$ns" link set eth0 up
ip -n "$ns" link set lo up

# Its certificates.
pki=$work/pki
rm -rf "$pki"
mkdir -p "$pki"
(
    cd "$pki"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=bench-ca -addext basicConstraints=critical,CA:TRUE \
        -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem 2>/dev/null
    printf 'subjectAltName=IP:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$there" >server.ext
    printf 'extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n' >client.ext
    for leaf in server client; do
        openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=bench-$leaf" \
            -keyout "$leaf.key" -out "$leaf.csr" 2>/dev/null
        openssl x509 -req -in "$leaf.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
            -extfile "$leaf.ext" -out "$leaf.pem" 2>/dev/null
    done
)

start_daemon() {
    ip netns exec "$ns" "$K" --root "$work/daemon-root" serve --addr "tcp://$there:$port" \
        --tls-cert "$pki/server.pem" --tls-key "$pki/server.key" --tls-ca "$pki/ca.pem" \
        2>"$work/daemon.log" &
    daemon=$!
    for _ in $(seq 100); do grep -q 'listening on tcp' "$work/daemon.log" 2>/dev/null && return; sleep 0.1; done
    echo "the daemon did not start:" >&2
    cat "$work/daemon.log" >&2
    exit 1
}
stop_daemon() {
    kill "$daemon"
    wait "$daemon" 2>/dev/null || true
    daemon=
}
"$K" create remote --driver remote --endpoint "tcp://$there:$port" \
    --driver-opt "cacert=$pki/ca.pem,cert=$pki/client.pem,key=$pki/client.key" >/dev/null

ctx=$work/context
scripts/bench-context.py "$ctx" "$mb" "$files"
bytes=$(du -sb --apparent-size "$ctx/data" | cut -f1)
# The checksum caches ignore files written in the last 2 s.
sleep 3
build() { # BUILDER ROOT LOG
    "$K" --root "$2" "$ctx" --builder "$1" -o type=image,name=bench/remote:1 --progress plain 2>"$3"
}

echo "context: $files files, $bytes bytes; load average before: $(load)"

# 1. First-time transfer, and the daemon's peak RSS. The client's checksum
# cache is warmed first (a build it sends to a daemon thrown away), so the
# runs time the transfer, not the client hashing its files.
rm -rf "$work/daemon-root" "$work/client-root"
if [[ " $parts " == *" first "* ]]; then
start_daemon
build remote "$work/client-root" "$work/warm-client.log"
stop_daemon
sync_times=()
for r in $(seq "$runs"); do
    rm -rf "$work/daemon-root"
    start_daemon
    t0=$(now)
    build remote "$work/client-root" "$work/first-$r.log"
    wall=$(since "$t0")
    line=$(grep 'context: received' "$work/daemon.log" | tail -1)
    took=$(sed -n 's/.* in \([0-9.]*\) s.*/\1/p' <<<"$line")
    hwm=$(awk '/VmHWM/ {print $2}' "/proc/$daemon/status")
    sync_times+=("$took")
    echo "first build through the daemon (run $r): $wall s wall; context synced in $took s ($(python3 -c "print(f'{$bytes / $took / 1e6:.0f}')") MB/s); daemon peak RSS $((hwm / 1024)) MiB; $(grep -o 'sent [0-9]* files ([0-9]* bytes)' "$work/first-$r.log"); load $(load)"
    stop_daemon
done
echo "first-time context sync, median: $(median "${sync_times[@]}") s"

# The same bytes over plain TCP to the host: every file sent with
# sendfile on one connection, read there and dropped.
raw_times=()
for r in $(seq "$runs"); do
    ip netns exec "$ns" python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(1)
c, _ = s.accept()
buf = bytearray(1 << 20)
while c.recv_into(buf):
    pass
' "$there" "$raw_port" &
    sink=$!
    sleep 0.5
    t0=$(now)
    python3 -c '
import os, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])))
for d, _, names in sorted(os.walk(sys.argv[3])):
    for n in sorted(names):
        with open(os.path.join(d, n), "rb") as f:
            c.sendfile(f)
c.shutdown(socket.SHUT_WR)
c.recv(1)
' "$there" "$raw_port" "$ctx/data"
    took=$(since "$t0")
    wait "$sink"
    raw_times+=("$took")
    echo "the same files over plain TCP (run $r): $took s ($(python3 -c "print(f'{$bytes / $took / 1e6:.0f}')") MB/s)"
done
echo "plain TCP, median: $(median "${raw_times[@]}") s"
fi

# 2. Rebuilds with nothing changed: the daemon (its store now warm) vs the
# embedded builder.
start_daemon
build remote "$work/client-root" "$work/warm-remote.log"
build local "$work/local-root" "$work/warm-local.log"
# The runs alternate between the two, so that a change in the machine's
# load touches both alike.
local_times=()
remote_times=()
for r in $(seq "$runs"); do
    for b in local remote; do
        t0=$(now)
        root=$work/client-root
        [[ $b == local ]] && root=$work/local-root
        build "$b" "$root" "$work/rebuild-$b-$r.log"
        took=$(since "$t0")
        if [[ $b == local ]]; then local_times+=("$took"); else remote_times+=("$took"); fi
        echo "no-change rebuild, builder $b (run $r): $took s; $(grep -o 'sent [0-9]* files ([0-9]* bytes)' "$work/rebuild-$b-$r.log" || echo embedded); load $(load)"
    done
done
lm=$(median "${local_times[@]}")
rmed=$(median "${remote_times[@]}")
echo "no-change rebuild, median: builder local $lm s, builder remote $rmed s ($(python3 -c "print(f'{$rmed / $lm:.2f}')")x)"
grep 'context: read' "$work/daemon.log" | tail -1
grep 'context: received' "$work/daemon.log" | tail -1
echo "load average after: $(load)"
