#!/usr/bin/env bash
# A real two-node Kubernetes cluster on this one machine, for the tests:
#
#   scripts/cluster.sh up       # build what is missing, start everything, wait until both nodes are Ready
#   scripts/cluster.sh down     # stop everything; no process, mount, cgroup, veth or bridge is left
#   scripts/cluster.sh status   # what runs, the nodes, where the files are
#
# Needs root (containerd, kubelets, cgroups, bridges). Everything it starts
# is daemonized; its state lives under target/cluster/ of this checkout (so a
# CI clone gets its own cluster), with the logs in target/cluster/logs/.
# `up` on a running cluster only checks it and writes the files again.
#
# What runs:
#   - etcd, kube-apiserver, kube-controller-manager, kube-scheduler on
#     127.0.0.1, on free ports (no kube-proxy, no CoreDNS);
#   - two nodes, kbuild-node1 and kbuild-node2, each a kubelet with its own
#     containerd (root, state, socket, config, runc root), root dir, ports,
#     cgroup root (/kbuild-nodeN in each cgroup v1 hierarchy), CNI bridge
#     (kbuild-br1/2, host-local IPAM, pod subnets 10.244.1.0/24 and
#     10.244.2.0/24);
#   - both kubelets listen on their own port on all addresses; a node's
#     InternalIP is the machine's own address (a kubelet refuses a loopback
#     node IP), which the API server uses to reach the kubelets for logs,
#     exec and port-forward (their streams come from containerd on 127.0.0.1);
#   - kbuild-node2 carries kubernetes.io/arch=arm64: the kubelet sets the
#     label from its own GOARCH and puts it back on every status update, so a
#     MutatingAdmissionPolicy (deploy/cluster/node-arch.yaml) makes the API
#     server keep arm64 on that node, whatever the kubelet sends;
#   - a docker-registry on a free 127.0.0.1 port that both containerds pull
#     from over plain HTTP (its address is in target/cluster/registry);
#   - the pod sandbox image kbuild.test/pause:1: the static pause program of
#     scripts/cluster (Go) in a FROM scratch image built by kubectl-build and
#     imported into each node's containerd.
#
# Files for the tests:
#   target/cluster/admin.kubeconfig   cluster-admin (system:masters)
#   target/cluster/user.kubeconfig    user kbuild-test-user, namespace kbuild-test,
#                                     bound to the Role of deploy/rbac/role.yaml only
#   target/cluster/registry           HOST:PORT of the registry the nodes pull from
#   target/cluster/bin/kubectl        kubectl of the same release
#
# Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet
# and kubectl of Kubernetes $K8S_VERSION are built from the Go module
# k8s.io/kubernetes through the wrapper module scripts/cluster (go.mod pins
# every k8s.io staging module to the same release), etcd from
# go.etcd.io/etcd/server/v3 through scripts/cluster/etcd. They are cached
# outside the checkout, by version, under $KBUILD_CACHE (default
# /var/cache/kubectl-build): k8s-$K8S_VERSION/, etcd-$ETCD_VERSION/, and Go's
# module and build caches in go/. A machine that has them skips the build
# (a cold build took 30 minutes on 2 cores shared with other builds).
# containerd, runc and the CNI plugins are Debian's (containerd,
# runc, containernetworking-plugins; installed with apt-get when missing).
#
# Environment:
#   KBUILD_CACHE   where built binaries are cached (default /var/cache/kubectl-build)
#   KBUILD_BIN     the kubectl-build binary that builds the pause image
#                  (default target/release/kubectl-build, else target/debug/kubectl-build,
#                  else `cargo build -p kubectl-build`)
#   GO             the Go toolchain (default /usr/local/go/bin/go, else go on PATH)
set -euo pipefail

cd "$(dirname "$0")/.."
checkout=$PWD

K8S_VERSION=v1.34.4
ETCD_VERSION=v3.6.17
PAUSE_IMAGE=kbuild.test/pause:1
NODES=(1 2)
ARM64_NODE=kbuild-node2
NAMESPACE=kbuild-test
TEST_USER=kbuild-test-user
SERVICE_CIDR=10.96.0.0/24
SERVICE_IP=10.96.0.1

cache=${KBUILD_CACHE:-/var/cache/kubectl-build}
k8s_bin=$cache/k8s-$K8S_VERSION
etcd_bin=$cache/etcd-$ETCD_VERSION
C=$checkout/target/cluster
pki=$C/pki
logs=$C/logs
run=$C/run

log() { printf 'cluster: %s\n' "$*" >&2; }
die() { printf 'error: cluster: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- helpers

# A process that is gone or a zombie is not alive.
alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $state != Z* ]]
}
pid_of() { [[ -s $run/$1.pid ]] && cat "$run/$1.pid"; }
running() { local p; p=$(pid_of "$1") && alive "$p"; }

# A TCP port on 127.0.0.1 that nothing listens on and that this script has
# not handed out yet.
declare -A handed_out=()
free_port() {
    local port used
    used=$(ss -Htan | awk '{ n = split($4, a, ":"); print a[n] }')
    while :; do
        port=$((20000 + RANDOM % 30000))
        [[ -n ${handed_out[$port]:-} ]] && continue
        grep -qx "$port" <<<"$used" && continue
        handed_out[$port]=1
        echo "$port"
        return
    done
}

# Starts "$@" daemonized as NAME (setsid: it outlives this script), output in
# logs/NAME.log, pid in run/NAME.pid.
start_daemon() {
    local name=$1
    shift
    if running "$name"; then
        log "$name already running (pid $(pid_of "$name"))"
        return
    fi
    # 9>&-: the daemon must not hold this script's lock (fd 9) open.
    setsid "$@" >>"$logs/$name.log" 2>&1 </dev/null 9>&- &
    echo $! >"$run/$name.pid"
    log "$name started (pid $!, log ${logs#"$checkout"/}/$name.log)"
}

# Waits until COMMAND succeeds, or fails naming WHAT and NAME's log.
wait_for() {
    local what=$1 name=$2 seconds=$3
    shift 3
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        if ! running "$name"; then
            tail -n 20 "$logs/$name.log" >&2 || true
            die "$name exited before $what; its log: ${logs#"$checkout"/}/$name.log"
        fi
        if ((SECONDS > deadline)); then
            tail -n 20 "$logs/$name.log" >&2 || true
            die "$what: not within ${seconds}s; see ${logs#"$checkout"/}/$name.log"
        fi
        sleep 0.5
    done
}

stop_daemon() {
    local name=$1 p
    p=$(pid_of "$name") || return 0
    if alive "$p"; then
        kill "$p" 2>/dev/null || true
        for _ in $(seq 1 100); do
            alive "$p" || break
            sleep 0.1
        done
        if alive "$p"; then
            kill -KILL "$p" 2>/dev/null || true
            log "$name (pid $p) killed after 10s"
        else
            log "$name (pid $p) stopped"
        fi
    fi
    rm -f "$run/$name.pid"
}

go_bin() {
    if [[ -n ${GO:-} ]]; then echo "$GO"; return; fi
    if [[ -x /usr/local/go/bin/go ]]; then echo /usr/local/go/bin/go; return; fi
    command -v go || die "no Go toolchain: set GO or install Go 1.24+ (/usr/local/go/bin/go)"
}

# Kubernetes 1.34 needs Go 1.24 or newer (Debian 12's golang-go is 1.19).
check_go() {
    local go=$1 v
    v=$("$go" env GOVERSION) || die "$go does not run"
    v=${v#go}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%.*}
    if ((major < 1 || (major == 1 && minor < 24))); then
        die "$go is Go $v; building Kubernetes $K8S_VERSION needs Go 1.24 or newer (set GO=/path/to/go)"
    fi
}

# ---------------------------------------------------------------- build

go_env() {
    export GOWORK=off GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
    export GOMODCACHE=$cache/go/mod GOCACHE=$cache/go/build
}

# Builds into a temporary directory next to the cache entry, then renames it:
# a cut-off build never leaves a half-filled entry.
build_k8s() {
    local want=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl pause) b missing=0
    for b in "${want[@]}"; do [[ -x $k8s_bin/$b ]] || missing=1; done
    ((missing)) || return 0
    local go tmp ld p start
    go=$(go_bin)
    check_go "$go"
    go_env
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.k8s-$K8S_VERSION.XXXXXX")
    ld="-s -w"
    for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=34"
        ld="$ld -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
    done
    log "building Kubernetes $K8S_VERSION into $k8s_bin (cold: about 30 minutes on 2 busy cores)"
    start=$SECONDS
    (cd scripts/cluster && nice -n 10 "$go" build -trimpath -ldflags "$ld" -o "$tmp/" \
        k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
        k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
        k8s.io/kubernetes/cmd/kubectl ./pause) || { rm -rf "$tmp"; die "the Kubernetes build failed"; }
    rm -rf "$k8s_bin"
    mv "$tmp" "$k8s_bin"
    log "built Kubernetes $K8S_VERSION in $((SECONDS - start))s"
}

# Once etcd and Kubernetes are built their binaries are the cache; Go's build
# cache (over 3 GB after the Kubernetes build) is only needed to build them
# again, which a new version does from scratch anyway. The module cache is
# kept (a rebuild of the same version then needs no download).
drop_go_build_cache() {
    [[ -d $cache/go/build ]] || return 0
    log "removing Go's build cache $cache/go/build ($(du -sh "$cache/go/build" 2>/dev/null | cut -f1)); the built binaries are kept"
    rm -rf "$cache/go/build"
}

build_etcd() {
    [[ -x $etcd_bin/etcd ]] && return 0
    local go tmp start
    go=$(go_bin)
    check_go "$go"
    go_env
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/.etcd-$ETCD_VERSION.XXXXXX")
    log "building etcd $ETCD_VERSION into $etcd_bin"
    start=$SECONDS
    (cd scripts/cluster/etcd && nice -n 10 "$go" build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .) \
        || { rm -rf "$tmp"; die "the etcd build failed"; }
    rm -rf "$etcd_bin"
    mv "$tmp" "$etcd_bin"
    log "built etcd $ETCD_VERSION in $((SECONDS - start))s"
}

# Debian's containerd, runc and CNI plugins.
PACKAGES=(containerd runc containernetworking-plugins docker-registry openssl iproute2 curl)
install_packages() {
    local pkg status missing=()
    for pkg in "${PACKAGES[@]}"; do
        status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
        [[ $status == installed ]] || missing+=("$pkg")
    done
    ((${#missing[@]} == 0)) && return 0
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q "${missing[@]}" >&2
}

kbuild_bin() {
    if [[ -n ${KBUILD_BIN:-} ]]; then echo "$KBUILD_BIN"; return; fi
    local b
    for b in target/release/kubectl-build target/debug/kubectl-build; do
        [[ -x $b ]] && { echo "$checkout/$b"; return; }
    done
    log "building kubectl-build (cargo build -p kubectl-build)"
    cargo build -q --locked -p kubectl-build >&2 || die "cargo build -p kubectl-build failed"
    echo "$checkout/target/debug/kubectl-build"
}

# The sandbox image: FROM scratch, the static pause program; a docker
# archive that `ctr images import` names kbuild.test/pause:1.
build_pause_image() {
    [[ -s $C/pause/pause.tar ]] && return 0
    local kb ctx
    kb=$(kbuild_bin)
    ctx=$C/pause/context
    rm -rf "$ctx"
    mkdir -p "$ctx"
    cp "$k8s_bin/pause" "$ctx/pause"
    cat >"$ctx/Dockerfile" <<'EOF'
FROM scratch
COPY pause /pause
USER 65535:65535
ENTRYPOINT ["/pause"]
EOF
    "$kb" --root "$C/pause/store" "$ctx" --platform linux/amd64 -t "$PAUSE_IMAGE" \
        -o "type=docker,dest=$C/pause/pause.tar.tmp" --progress quiet >&2 \
        || die "kubectl-build could not build the pause image (context $ctx)"
    mv "$C/pause/pause.tar.tmp" "$C/pause/pause.tar"
    rm -rf "$C/pause/store"
    log "built the sandbox image $PAUSE_IMAGE with $kb"
}

# ---------------------------------------------------------------- certificates

# CA-signed certificate NAME for SUBJECT, with optional subjectAltName SAN.
cert() {
    local name=$1 subject=$2 san=${3:-} usage=${4:-clientAuth}
    [[ -s $pki/$name.crt ]] && return 0
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/$name.key" 2>/dev/null
    openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        if [[ -n $san ]]; then echo "subjectAltName=$san"; fi
    } >"$pki/$name.ext"
    openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 365 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
    rm -f "$pki/$name.csr" "$pki/$name.ext"
}

make_pki() {
    mkdir -p "$pki"
    chmod 700 "$pki"
    if [[ ! -s $pki/ca.crt ]]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/ca.key" 2>/dev/null
        openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=kbuild-test-cluster-ca" -days 365 \
            -sha256 -out "$pki/ca.crt" 2>/dev/null
    fi
    cert apiserver "/CN=kube-apiserver" \
        "IP:127.0.0.1,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc" \
        serverAuth
    cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
    cert admin "/O=system:masters/CN=kbuild-admin"
    cert controller-manager "/CN=system:kube-controller-manager"
    cert scheduler "/CN=system:kube-scheduler"
    cert user "/O=kbuild-testers/CN=$TEST_USER"
    local n
    for n in "${NODES[@]}"; do
        cert "kubelet$n" "/O=system:nodes/CN=system:node:kbuild-node$n"
    done
    if [[ ! -s $pki/sa.pub ]]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$pki/sa.key" 2>/dev/null
        openssl pkey -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
    fi
}

# kubeconfig FILE USER-CERT-NAME [NAMESPACE]: certificates embedded, so the
# file stands alone.
kubeconfig() {
    local file=$1 name=$2 ns=${3:-default}
    cat >"$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kbuild-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(base64 -w0 "$pki/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$pki/$name.crt")
    client-key-data: $(base64 -w0 "$pki/$name.key")
contexts:
- name: kbuild-test
  context:
    cluster: kbuild-test
    user: $name
    namespace: $ns
current-context: kbuild-test
EOF
    chmod 600 "$file.tmp"
    mv "$file.tmp" "$file"
}

# ---------------------------------------------------------------- control plane

# Ports are chosen once and kept in run/ports, so `up` on a running cluster
# finds the same ones.
load_ports() {
    if [[ -s $run/ports ]]; then
        # shellcheck disable=SC1091
        source "$run/ports"
        return
    fi
    ETCD_PORT=$(free_port)
    ETCD_PEER_PORT=$(free_port)
    API_PORT=$(free_port)
    CM_PORT=$(free_port)
    SCHED_PORT=$(free_port)
    KUBELET1_PORT=$(free_port)
    KUBELET2_PORT=$(free_port)
    KUBELET1_HEALTHZ=$(free_port)
    KUBELET2_HEALTHZ=$(free_port)
    declare -p ETCD_PORT ETCD_PEER_PORT API_PORT CM_PORT SCHED_PORT KUBELET1_PORT KUBELET2_PORT \
        KUBELET1_HEALTHZ KUBELET2_HEALTHZ | sed 's/^declare -- //' >"$run/ports"
}

kubectl_admin() { "$C/bin/kubectl" --kubeconfig "$C/admin.kubeconfig" --request-timeout=20s "$@"; }

start_control_plane() {
    start_daemon etcd "$etcd_bin/etcd" --name kbuild-test --data-dir "$C/etcd" \
        --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
        --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
        --initial-cluster "kbuild-test=http://127.0.0.1:$ETCD_PEER_PORT" \
        --quota-backend-bytes 1073741824 --log-level warn
    wait_for "etcd answering on 127.0.0.1:$ETCD_PORT" etcd 30 \
        curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

    # The policy that keeps kubernetes.io/arch=arm64 on node 2 is beta in
    # 1.34 (MutatingAdmissionPolicy, admissionregistration.k8s.io/v1beta1).
    start_daemon kube-apiserver "$k8s_bin/kube-apiserver" \
        --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
        --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
        --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
        --client-ca-file "$pki/ca.crt" \
        --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$pki/sa.pub" \
        --service-account-signing-key-file "$pki/sa.key" \
        --service-cluster-ip-range "$SERVICE_CIDR" \
        --authorization-mode Node,RBAC --allow-privileged=true \
        --endpoint-reconciler-type none --kubelet-preferred-address-types InternalIP \
        --feature-gates MutatingAdmissionPolicy=true \
        --runtime-config admissionregistration.k8s.io/v1beta1=true \
        --profiling=false
    wait_for "kube-apiserver ready on 127.0.0.1:$API_PORT" kube-apiserver 90 \
        curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "https://127.0.0.1:$API_PORT/readyz"

    start_daemon kube-controller-manager "$k8s_bin/kube-controller-manager" \
        --kubeconfig "$C/controller-manager.kubeconfig" \
        --authentication-kubeconfig "$C/controller-manager.kubeconfig" \
        --authorization-kubeconfig "$C/controller-manager.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$CM_PORT" --leader-elect=false \
        --root-ca-file "$pki/ca.crt" --service-account-private-key-file "$pki/sa.key" \
        --use-service-account-credentials=true --profiling=false
    start_daemon kube-scheduler "$k8s_bin/kube-scheduler" \
        --kubeconfig "$C/scheduler.kubeconfig" \
        --authentication-kubeconfig "$C/scheduler.kubeconfig" \
        --authorization-kubeconfig "$C/scheduler.kubeconfig" \
        --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false \
        --profiling=false
}

# ---------------------------------------------------------------- nodes

cgroup_hierarchies() {
    awk '$3 == "cgroup" { print $2 }' /proc/mounts
}

# The above plus a hybrid host's cgroup2 mount, where runc also makes
# directories.
all_cgroup_mounts() {
    awk '$3 == "cgroup" || $3 == "cgroup2" { print $2 }' /proc/mounts
}

# /kbuild-nodeN in every cgroup v1 hierarchy: the node's kubelet puts its
# kubepods there, so the two kubelets never share cgroups.
make_cgroup_root() {
    local n=$1 h
    for h in $(cgroup_hierarchies); do
        mkdir -p "$h/kbuild-node$n"
        if [[ -e $h/cpuset.cpus ]]; then
            [[ -s $h/kbuild-node$n/cpuset.cpus ]] || cat "$h/cpuset.cpus" >"$h/kbuild-node$n/cpuset.cpus"
            [[ -s $h/kbuild-node$n/cpuset.mems ]] || cat "$h/cpuset.mems" >"$h/kbuild-node$n/cpuset.mems"
        fi
    done
}

# Writes standard input to FILE unless FILE already holds it, through a
# rename: containerd watches its CNI directory and must never read half a file.
write_file() {
    local file=$1
    cat >"$file.tmp"
    if cmp -s "$file.tmp" "$file"; then
        rm -f "$file.tmp"
    else
        mv "$file.tmp" "$file"
    fi
}

node_files() {
    local n=$1 registry=$2
    local N=$C/node$n
    mkdir -p "$N/containerd" "$N/kubelet" "$N/cni/net.d" "$N/cni/ipam" "$N/certs.d/$registry"
    write_file "$N/containerd/config.toml" <<EOF
version = 2
root = "$N/containerd/root"
state = "$N/containerd/state"
[grpc]
  address = "$N/containerd.sock"
[ttrpc]
  address = "$N/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  netns_mounts_under_state_dir = true
  # a sandbox's -998 and a Guaranteed pod's -997 need CAP_SYS_RESOURCE,
  # which a container-based CI machine may lack: never below containerd's own
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "$N/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$N/cni/net.d"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$N/certs.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$N/containerd/opt"
EOF
    write_file "$N/certs.d/$registry/hosts.toml" <<EOF
server = "http://$registry"

[host."http://$registry"]
  capabilities = ["pull", "resolve"]
EOF
    write_file "$N/cni/net.d/10-kbuild.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "kbuild-node$n",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "kbuild-br$n",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$N/cni/ipam",
        "ranges": [[{ "subnet": "10.244.$n.0/24" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
    local port_var=KUBELET${n}_PORT healthz_var=KUBELET${n}_HEALTHZ
    write_file "$N/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 0.0.0.0
port: ${!port_var}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: ${!healthz_var}
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$N/containerd.sock
imageServiceEndpoint: unix://$N/containerd.sock
cgroupDriver: cgroupfs
cgroupRoot: /kbuild-node$n
cgroupsPerQOS: true
enforceNodeAllocatable: [pods]
failCgroupV1: false
failSwapOn: false
staticPodPath: ""
podPidsLimit: 4096
maxPods: 40
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard:
  memory.available: "100Mi"
  nodefs.available: "1%"
  imagefs.available: "1%"
  nodefs.inodesFree: "1%"
evictionPressureTransitionPeriod: 10s
nodeStatusUpdateFrequency: 10s
resolvConf: /etc/resolv.conf
podLogsDir: $N/pod-logs
protectKernelDefaults: false
localStorageCapacityIsolation: true
EOF
}

start_node() {
    local n=$1
    local N=$C/node$n
    make_cgroup_root "$n"
    start_daemon "containerd$n" /usr/bin/containerd --config "$N/containerd/config.toml"
    wait_for "containerd of node $n answering on $N/containerd.sock" "containerd$n" 30 \
        ctr --address "$N/containerd.sock" version
    # grep reads all of ctr's output: -q would stop at the first match and,
    # with pipefail, a ctr killed by SIGPIPE would fail the check.
    if ! ctr --address "$N/containerd.sock" -n k8s.io images ls -q | grep -x "$PAUSE_IMAGE" >/dev/null; then
        ctr --address "$N/containerd.sock" -n k8s.io images import \
            "$C/pause/pause.tar" >&2 || die "ctr could not import $C/pause/pause.tar into node $n"
        ctr --address "$N/containerd.sock" -n k8s.io images ls -q | grep -x "$PAUSE_IMAGE" >/dev/null \
            || die "node $n's containerd has no $PAUSE_IMAGE after importing $C/pause/pause.tar"
        log "node $n: imported $PAUSE_IMAGE"
    fi
    start_daemon "kubelet$n" "$k8s_bin/kubelet" --config "$N/kubelet/config.yaml" \
        --kubeconfig "$C/kubelet$n.kubeconfig" --root-dir "$N/kubelet/root" \
        --cert-dir "$N/kubelet/pki" --hostname-override "kbuild-node$n" \
        --node-labels "kubectl-build.test/node=$n"
}

node_ready() {
    [[ $(kubectl_admin get node "$1" \
        -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}

node_arch() {
    kubectl_admin get node "$1" -o 'jsonpath={.metadata.labels.kubernetes\.io/arch}' 2>/dev/null
}

# ---------------------------------------------------------------- up / down / status

up() {
    [[ $(id -u) -eq 0 ]] || die "needs root (containerd, kubelets, cgroups, bridges)"
    local started=$SECONDS
    install_packages
    build_etcd
    build_k8s
    drop_go_build_cache
    mkdir -p "$C/bin" "$logs" "$run"
    install -m 755 "$k8s_bin/kubectl" "$C/bin/kubectl.tmp"
    mv "$C/bin/kubectl.tmp" "$C/bin/kubectl"
    build_pause_image
    make_pki
    load_ports

    local registry
    registry=$(scripts/registry.sh start "$C/registry-data" 2>>"$logs/registry.log" 9>&-) \
        || die "the test registry did not start; see ${logs#"$checkout"/}/registry.log"
    echo "$registry" >"$C/registry"

    kubeconfig "$C/admin.kubeconfig" admin
    kubeconfig "$C/user.kubeconfig" user "$NAMESPACE"
    kubeconfig "$C/controller-manager.kubeconfig" controller-manager
    kubeconfig "$C/scheduler.kubeconfig" scheduler
    local n
    for n in "${NODES[@]}"; do kubeconfig "$C/kubelet$n.kubeconfig" "kubelet$n"; done

    start_control_plane
    # Before node 2 registers, so that it registers as arm64.
    kubectl_admin apply -f deploy/cluster/node-arch.yaml >&2
    kubectl_admin apply -f deploy/rbac/namespace.yaml -f deploy/rbac/role.yaml >&2
    kubectl_admin -n "$NAMESPACE" create rolebinding kubectl-build-test --role kubectl-build \
        --user "$TEST_USER" --dry-run=client -o yaml | kubectl_admin apply -f - >&2

    for n in "${NODES[@]}"; do
        node_files "$n" "$registry"
        start_node "$n"
    done
    for n in "${NODES[@]}"; do
        wait_for "node kbuild-node$n Ready" "kubelet$n" 180 node_ready "kbuild-node$n"
    done
    wait_for "service account default in $NAMESPACE" kube-controller-manager 60 \
        kubectl_admin -n "$NAMESPACE" get serviceaccount default
    local arch
    arch=$(node_arch "$ARM64_NODE")
    [[ $arch == arm64 ]] || die "$ARM64_NODE has kubernetes.io/arch=$arch, not arm64 (policy deploy/cluster/node-arch.yaml)"
    log "up in $((SECONDS - started))s: nodes $(kubectl_admin get nodes -L kubernetes.io/arch --no-headers | awk '{ printf "%s(%s,%s) ", $1, $2, $NF }')"
    log "kubeconfigs: target/cluster/admin.kubeconfig, target/cluster/user.kubeconfig; registry $registry; kubectl: target/cluster/bin/kubectl"
}

# Processes whose command line names PATH (containerd's shims name their
# containerd's socket).
pids_naming() {
    local p
    for p in /proc/[0-9]*; do
        [[ -r $p/cmdline ]] || continue
        if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$1"; then
            echo "${p#/proc/}"
        fi
    done
}

# Kills every process in the node's cgroups (containers), then removes them.
clean_cgroups() {
    local n=$1 h dir p
    for h in $(all_cgroup_mounts); do
        dir=$h/kbuild-node$n
        [[ -d $dir ]] || continue
        for _ in 1 2 3 4 5; do
            local left=0
            while read -r p; do
                [[ -n $p ]] || continue
                kill -KILL "$p" 2>/dev/null || true
                left=1
            done < <(find "$dir" -name cgroup.procs -exec cat {} + 2>/dev/null)
            ((left)) || break
            sleep 0.2
        done
        find "$dir" -depth -type d -exec rmdir {} \; 2>/dev/null || true
        if [[ -d $dir ]]; then log "warning: could not remove cgroup $dir"; fi
    done
}

unmount_under() {
    local mnt
    awk -v d="$1" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo \
        | sort -r | while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null \
                || log "warning: could not unmount $mnt"
        done
}

down() {
    [[ $(id -u) -eq 0 ]] || die "needs root"
    local n N p
    for n in "${NODES[@]}"; do stop_daemon "kubelet$n"; done
    for n in "${NODES[@]}"; do
        N=$C/node$n
        if running "containerd$n"; then
            # stop the pods' containers through containerd, which also
            # removes their network namespaces' veths
            local ids
            ids=$(ctr --address "$N/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null || true)
            for p in $ids; do
                ctr --address "$N/containerd.sock" -n k8s.io tasks kill -s KILL "$p" >/dev/null 2>&1 || true
            done
            # deleting a task lets its shim exit and remove its socket
            for p in $ids; do
                ctr --address "$N/containerd.sock" -n k8s.io tasks delete -f "$p" >/dev/null 2>&1 || true
            done
        fi
        stop_daemon "containerd$n"
        # shims left over: kill them and remove their sockets, named by
        # containerd 1.6 after sha256(address/namespace/id)
        local id
        for p in $(pids_naming "$N/containerd.sock"); do
            id=$(tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | sed -n '/^-id$/{n;p;}')
            kill -KILL "$p" 2>/dev/null || true
            if [[ -n $id ]]; then
                rm -f "/run/containerd/s/$(printf '%s' "$N/containerd.sock/k8s.io/$id" | sha256sum | cut -d' ' -f1)"
            fi
        done
        clean_cgroups "$n"
        unmount_under "$N"
        ip link del "kbuild-br$n" 2>/dev/null || true
        # the kubelet's links to its containers' logs
        find /var/log/containers -maxdepth 1 -type l -lname "$N/*" -delete 2>/dev/null || true
    done
    for p in kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_daemon "$p"; done
    if [[ -d $C/registry-data ]]; then scripts/registry.sh stop "$C/registry-data" >/dev/null 2>&1; fi
    # veths of pods whose namespaces are gone went with them; any left on
    # our bridges' names are removed with the bridges above
    for n in "${NODES[@]}"; do rm -rf "$C/node$n"; done
    rm -rf "$C/etcd" "$C/registry-data" "$run" "$C/registry" "$C"/*.kubeconfig
    log "down: no process, mount, cgroup or bridge of the cluster is left (logs kept in ${logs#"$checkout"/})"
}

status() {
    local name p rc=0
    for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd1 kubelet1 containerd2 kubelet2; do
        if running "$name"; then
            printf '%-24s running (pid %s)\n' "$name" "$(pid_of "$name")"
        else
            printf '%-24s stopped\n' "$name"
            rc=1
        fi
    done
    if [[ -s $C/registry ]] && p=$(cat "$C/registry-data/pid" 2>/dev/null) && alive "$p"; then
        printf '%-24s running at %s (pid %s)\n' registry "$(cat "$C/registry")" "$p"
    else
        printf '%-24s stopped\n' registry
        rc=1
    fi
    if running kube-apiserver && [[ -x $C/bin/kubectl ]]; then
        kubectl_admin get nodes -L kubernetes.io/arch -o wide || rc=1
    fi
    return $rc
}

case ${1:-} in
up)
    mkdir -p "$C" "$logs" "$run"
    exec 9>"$C/.lock"
    flock 9
    up
    ;;
down)
    mkdir -p "$C"
    exec 9>"$C/.lock"
    flock 9
    down
    ;;
status) status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
