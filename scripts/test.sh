#!/usr/bin/env bash
# The project's test command (README, CI). Idempotent: every step checks first
# and does nothing when its result is already there.
#   1. installs the Debian packages the integration tests run (apt, only if missing)
#   2. prepares the busybox fixtures (scripts/fixtures.sh, cached under target/fixtures)
#   3. mounts binfmt_misc so foreign-architecture RUN steps can be emulated
#   4. checks formatting (cargo fmt) and lints (cargo clippy -D warnings)
#   5. starts the test cluster (scripts/cluster.sh up; stopped at the end if
#      this run started it)
#   6. runs the whole workspace's tests; extra arguments go to `cargo test`,
#      then prints how many tests skipped and why
# CI=true is exported unless the caller set CI: a test that lacks a
# prerequisite then fails instead of skipping (kbuild_testkit's
# skip_or_fail is the one way to skip). Run with CI=false to allow skips.
set -euo pipefail

cd "$(dirname "$0")/.."
export CI="${CI:-true}"

section() { printf '\n==== %s ====\n' "$*"; }

# Programs the tests start for real: docker-registry (distribution server),
# skopeo/umoci (independent OCI readers to cross-check our output), runc/crun
# (executors), qemu-user-static (emulated RUN), busybox-static (fixtures source
# and host-arch busybox), apache2-utils (htpasswd for Basic auth), openssl
# (self-signed TLS registry), docker.io (dockerd to check docker-archive loads),
# golang-go (the Go toolchain of the cross-compilation tests' builder image,
# scripts/golang-image.sh), libseccomp-dev (the RUN sandbox's system call
# filter is compiled with libseccomp; building the tool needs its headers),
# containerd, containernetworking-plugins, iproute2 and curl (the nodes of the
# test cluster, scripts/cluster.sh), iproute2 and util-linux (ip netns and
# taskset: the test hosts of kbuild_testkit::netns), binutils (strip: the
# kubernetes tests' builder image holds the test binary without its debug info),
# openssh-client (ssh-agent, ssh-keygen, ssh-add: --ssh through a daemon).
PACKAGES=(docker-registry skopeo umoci runc crun qemu-user-static busybox-static
          apache2-utils openssl docker.io golang-go libseccomp-dev protobuf-compiler
          containerd containernetworking-plugins iproute2 curl util-linux binutils git
          openssh-client)

section "system packages"
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]} == 0)); then
    echo "all present: ${PACKAGES[*]}"
else
    echo "installing: ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
        echo "error: packages ${missing[*]} are missing and installing them needs root;" \
             "run: sudo apt-get install ${missing[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

section "fixtures"
scripts/fixtures.sh

section "binfmt_misc"
binfmt=/proc/sys/fs/binfmt_misc
if [[ -e $binfmt/status ]]; then
    echo "already mounted at $binfmt"
elif mount -t binfmt_misc binfmt_misc "$binfmt" 2>/dev/null; then
    echo "mounted at $binfmt"
else
    echo "not mounted and could not mount $binfmt (needs root): emulated RUN tests will skip"
fi
if [[ -e $binfmt/status ]]; then
    registered=$(find "$binfmt" -maxdepth 1 -name 'qemu-*' -printf '%f ' 2>/dev/null || true)
    echo "status: $(cat "$binfmt/status"); qemu handlers: ${registered:-none}"
fi

section "cargo fmt --check"
cargo fmt --all --check

section "cargo clippy --all-targets -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The cluster tests (crates/cli/tests/cluster.rs) share one two-node cluster;
# starting it here keeps its build and start out of the tests' timings. The
# first run on a machine builds Kubernetes from source (cached under
# /var/cache/kubectl-build). A cluster this run started is stopped at the end.
section "test cluster (scripts/cluster.sh up)"
cluster_started=false
stop_cluster() {
    if $cluster_started; then
        section "test cluster (scripts/cluster.sh down)"
        scripts/cluster.sh down || true
    fi
}
if scripts/cluster.sh status >/dev/null 2>&1; then
    echo "already running"
else
    cluster_started=true
    trap stop_cluster EXIT
fi
if ! scripts/cluster.sh up; then
    if [[ $CI == true ]]; then
        echo "error: the test cluster did not start (logs in target/cluster/logs)" >&2
        exit 1
    fi
    echo "the test cluster did not start: the cluster tests will skip (CI=$CI)"
fi

# Every skip is appended here by kbuild_testkit::fixtures::skip_or_fail.
export KBUILD_SKIP_LOG=$PWD/target/test-skips.log
rm -f "$KBUILD_SKIP_LOG"
report_skips() {
    local n=0
    [[ -s $KBUILD_SKIP_LOG ]] && n=$(wc -l < "$KBUILD_SKIP_LOG")
    section "skipped tests: $n (CI=$CI)"
    [[ $n -gt 0 ]] && sort "$KBUILD_SKIP_LOG" | uniq -c
    return 0
}
trap 'report_skips; stop_cluster' EXIT

section "cargo test --workspace --locked $*"
cargo test --workspace --locked "$@"
