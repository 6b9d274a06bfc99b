#!/usr/bin/env bash
# Starts or stops a private Docker daemon (Debian's docker.io package) that
# shares nothing with a system Docker: its own socket, data, exec root (where
# it starts its own containerd), pidfile, daemon.json and identity key.
#
#   scripts/dockerd.sh start DIR    # prints the socket as a DOCKER_HOST value
#   scripts/dockerd.sh stop DIR
#   docker -H unix://DIR/docker.sock load -i image.tar
#
# No iptables rules and no bridge: containers run with `--network none` or
# `--network host`. Registries on 127.0.0.0/8 are insecure (plain HTTP).
# Keep DIR short (a unix socket path is limited to 107 bytes, and containerd's
# sockets live under DIR/exec).
set -euo pipefail

usage() { echo "usage: $0 start|stop DIR" >&2; exit 2; }
(($# == 2)) || usage
cmd=$1
mkdir -p "$2"
dir=$(cd "$2" && pwd)

# The docker.io package's CLI matches its daemon; another `docker` earlier in
# PATH may be much newer.
docker_cli() {
    if [[ -x /usr/bin/docker ]]; then echo /usr/bin/docker; else command -v docker; fi
}

# A process that is gone or a zombie (a killed dockerd whose parent has not
# reaped it yet) is not alive.
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}
running() { [[ -s $dir/pid ]] && alive "$(cat "$dir/pid")"; }

# dockerd unmounts its own mounts on a clean stop; after a crash or a KILL
# the bind mount of DIR/data and container mounts may remain.
unmount_leftovers() {
    local mnt
    # deepest first
    awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r mnt; do
            if umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null; then
                echo "unmounted leftover $mnt" >&2
            else
                echo "warning: could not unmount $mnt" >&2
            fi
        done
}

# After dockerd died without stopping them: its containers (runc state under
# DIR/exec), then the containerd-shims and containerd it started (their command
# lines name DIR/exec/).
kill_leftovers() {
    local rroot=$dir/exec/runtime-runc/moby id p sock
    if [[ -d $rroot ]] && command -v runc >/dev/null; then
        for id in $(runc --root "$rroot" list -q 2>/dev/null); do
            if runc --root "$rroot" delete --force "$id" 2>/dev/null; then
                echo "removed leftover container $id" >&2
            fi
            # containerd 1.6 names a shim's socket after its address and id;
            # a killed shim leaves it
            sock=/run/containerd/s/$(printf '%s' "$dir/exec/containerd/containerd.sock/moby/$id" \
                | sha256sum | cut -d' ' -f1)
            rm -f "$sock"
        done
    fi
    for p in /proc/[0-9]*; do
        [[ -r $p/cmdline ]] || continue
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$dir/exec/"; then
            if kill -KILL "${p#/proc/}" 2>/dev/null; then
                echo "killed leftover process ${p#/proc/}" >&2
            fi
        fi
    done
}

case $cmd in
start)
    if running; then
        echo "dockerd already running (pid $(cat "$dir/pid"))" >&2
        echo "unix://$dir/docker.sock"
        exit 0
    fi
    bin=$(command -v dockerd || true)
    if [[ -z $bin ]]; then
        echo "error: dockerd is not installed; run: apt-get install docker.io" >&2
        exit 1
    fi
    if ((${#dir} > 80)); then
        echo "error: $dir is too long for dockerd's unix sockets; use a shorter DIR" >&2
        exit 1
    fi
    unmount_leftovers
    mkdir -p "$dir/data" "$dir/exec"
    # its identity key would otherwise go to /etc/docker/key.json
    echo "{\"deprecated-key-path\": \"$dir/key.json\"}" >"$dir/daemon.json"
    rm -f "$dir/pid" "$dir/docker.sock"
    start=$(date +%s%N)
    setsid "$bin" \
        --config-file "$dir/daemon.json" \
        --data-root "$dir/data" \
        --exec-root "$dir/exec" \
        --pidfile "$dir/pid" \
        --host "unix://$dir/docker.sock" \
        --iptables=false --ip6tables=false --bridge=none \
        --insecure-registry 127.0.0.0/8 \
        >"$dir/log" 2>&1 </dev/null &
    pid=$!
    cli=$(docker_cli)
    for _ in $(seq 1 300); do
        if "$cli" -H "unix://$dir/docker.sock" version >/dev/null 2>&1; then
            echo "dockerd pid $pid ready in $((($(date +%s%N) - start) / 1000000)) ms" \
                 "(socket $dir/docker.sock, log $dir/log)" >&2
            echo "unix://$dir/docker.sock"
            exit 0
        fi
        if ! alive "$pid"; then
            echo "error: dockerd exited at start; the end of its log ($dir/log):" >&2
            tail -n 20 "$dir/log" >&2
            unmount_leftovers
            exit 1
        fi
        sleep 0.1
    done
    echo "error: dockerd did not answer within 30s; see $dir/log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
    ;;
stop)
    if running; then
        pid=$(cat "$dir/pid")
        # dockerd would give each running container 10s to stop on SIGTERM
        cli=$(docker_cli)
        ids=$("$cli" -H "unix://$dir/docker.sock" ps -q 2>/dev/null || true)
        if [[ -n $ids ]]; then
            # shellcheck disable=SC2086
            "$cli" -H "unix://$dir/docker.sock" kill $ids >/dev/null 2>&1 || true
        fi
        kill "$pid"
        # dockerd stops its containers and its containerd first
        for _ in $(seq 1 150); do
            alive "$pid" || break
            sleep 0.1
        done
        if alive "$pid"; then
            echo "dockerd pid $pid did not stop within 15s; killing it" >&2
            kill -KILL "$pid"
        fi
        echo "dockerd pid $pid stopped" >&2
    else
        echo "no dockerd running for $dir" >&2
    fi
    rm -f "$dir/pid"
    kill_leftovers
    unmount_leftovers
    ;;
*)
    usage
    ;;
esac
