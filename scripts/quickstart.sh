#!/usr/bin/env bash
# The README's quick start in one command, on a fresh Debian/Ubuntu machine
# with only the package mirror reachable (run as root):
#   1. installs the Debian packages it needs, builds kubectl-build;
#   2. starts a local registry on 127.0.0.1;
#   3. makes the base images from distribution packages with kubectl-build
#      itself: busybox for 7 architectures and a Go toolchain image;
#   4. cross-compiles examples/hello for 7 platforms in one build, pushes one
#      image index, and shows it.
# It uses the default store (KUBECTL_BUILD_ROOT, else ~/.local/share/kubectl-build)
# and a registry on 127.0.0.1:5000 (QUICKSTART_REGISTRY to change it), so the
# README's "by hand" command works as written afterwards. The registry keeps
# running; the script ends by saying how to run the image and stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
work=${QUICKSTART_DIR:-$PWD/target/quickstart}
platforms=linux/amd64,linux/386,linux/arm/v6,linux/arm/v7,linux/arm64,linux/ppc64le,linux/s390x

step() { printf '\n==> %s\n' "$*"; }

step "packages"
need=()
for p in docker-registry skopeo qemu-user-static busybox-static golang-go; do
    [[ $(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true) == installed ]] || need+=("$p")
done
if ((${#need[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q "${need[@]}"
fi

step "build kubectl-build"
cargo build --release -p kubectl-build
K=${CARGO_TARGET_DIR:-$PWD/target}/release/kubectl-build

step "local registry"
REG=$(scripts/registry.sh start "$work/registry" "${QUICKSTART_REGISTRY:-127.0.0.1:5000}")
echo "registry at $REG"

step "base images from Debian packages"
scripts/fixtures.sh >/dev/null
"$K" target/fixtures/busybox --platform "$platforms" \
    -t kbuild.local/busybox:latest -o type=image --progress plain
golang_ctx=$(scripts/golang-image.sh "$work/golang")
"$K" "$golang_ctx" --platform linux/amd64 \
    -t kbuild.local/golang:1.19 -o type=image --progress plain

step "cross-compile examples/hello for $platforms and push"
"$K" examples/hello -f examples/hello/Dockerfile.cross \
    --platform "$platforms" -t "$REG/demo/hello:1" --push --progress plain

step "the pushed index"
skopeo inspect --raw --tls-verify=false "docker://$REG/demo/hello:1"
echo

step "next"
cat <<EOF
The image is $REG/demo/hello:1, one index for $platforms.
Run it on this machine's platform with docker (its daemon treats 127.0.0.1 as insecure):
    docker run --rm $REG/demo/hello:1
or for another platform through QEMU, without docker:
    $K examples/hello -f examples/hello/Dockerfile.cross --platform linux/arm64 -o type=local,dest=$work/hello-arm64
    qemu-aarch64-static $work/hello-arm64/hello
Build it again by hand (same store, same registry; cached, so it takes a moment):
    $K examples/hello -f examples/hello/Dockerfile.cross --platform $platforms -t $REG/demo/hello:1 --push
Stop the registry when done:
    scripts/registry.sh stop $work/registry
EOF
