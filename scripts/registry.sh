#!/usr/bin/env bash
# Starts or stops Debian's docker-registry (package docker-registry) as a plain
# process on a free 127.0.0.1 port, for the quick start and manual testing:
#
#   scripts/registry.sh start DIR [ADDR]  # prints the address on stdout, e.g. 127.0.0.1:39229
#                                         # (details on stderr): REG=$(scripts/registry.sh start DIR)
#                                         # ADDR (e.g. 127.0.0.1:5000) fixes the address
#   scripts/registry.sh stop DIR
#
# DIR gets config.yml, data/ (the blobs), log, pid and addr. The port is chosen
# by the kernel (listen on port 0) and read back from the registry's log line
# "listening on ADDR", so two registries never race for the same port.
# Anonymous access, deletes enabled, plain HTTP: push to it with the registry
# marked insecure (127.0.0.0/8 is treated as insecure by our tool and by
# scripts/dockerd.sh).
set -euo pipefail

usage() { echo "usage: $0 start DIR [ADDR] | stop DIR" >&2; exit 2; }
[[ $# -eq 2 || ($# -eq 3 && $1 == start) ]] || usage
cmd=$1
listen=${3:-127.0.0.1:0}
mkdir -p "$2"
dir=$(cd "$2" && pwd)

running() { [[ -s $dir/pid ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }

case $cmd in
start)
    if running; then
        echo "registry already running (pid $(cat "$dir/pid"))" >&2
        cat "$dir/addr"
        exit 0
    fi
    bin=$(command -v docker-registry || true)
    if [[ -z $bin ]]; then
        echo "error: docker-registry is not installed; run: apt-get install docker-registry" >&2
        exit 1
    fi
    mkdir -p "$dir/data"
    cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: $listen
EOF
    rm -f "$dir/addr" "$dir/pid"
    # setsid: the registry outlives this script and its terminal.
    setsid "$bin" serve "$dir/config.yml" >"$dir/log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/pid"
    addr=""
    for _ in $(seq 1 100); do
        addr=$(sed -n 's/.*msg="listening on \([0-9.]*:[0-9]*\)".*/\1/p' "$dir/log" | head -n 1)
        [[ -n $addr ]] && break
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "error: docker-registry exited at start; its log ($dir/log):" >&2
            cat "$dir/log" >&2
            exit 1
        fi
        sleep 0.1
    done
    if [[ -z $addr ]]; then
        echo "error: docker-registry did not report its address within 10s; see $dir/log" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    echo "$addr" >"$dir/addr"
    echo "registry pid $pid listening on $addr (pidfile $dir/pid, log $dir/log)" >&2
    echo "$addr"
    ;;
stop)
    if ! running; then
        echo "no registry running for $dir"
        rm -f "$dir/pid"
        exit 0
    fi
    pid=$(cat "$dir/pid")
    kill "$pid"
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"
    fi
    rm -f "$dir/pid" "$dir/addr"
    echo "registry pid $pid stopped"
    ;;
*)
    usage
    ;;
esac
