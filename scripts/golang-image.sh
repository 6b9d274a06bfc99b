#!/usr/bin/env bash
# Prepares the build context of a local "golang" builder image, made only of
# COPY, from this machine's Go installation (Debian's golang-go, Go 1.19) and
# the amd64 busybox fixture, for the cross-compilation tests
# (crates/cli/tests/cross.rs). Prints the context directory on stdout.
#
#   scripts/golang-image.sh [DIR]     # default: target/fixtures/golang
#
# DIR/rootfs/ becomes the image's filesystem:
#   bin/, etc/, tmp/            the amd64 busybox fixture (sh and the applets)
#   usr/lib/go-1.19/            GOROOT: bin/go, the compile/asm/link/cgo/buildid/pack
#                               tools, pkg/include and the standard library's
#                               sources (no tests, testdata or cmd/): every target's
#                               standard library is compiled from them into GOCACHE
#   lib/..., lib64/...          the shared libraries `go` itself needs (found with
#                               ldd; the tools are static), plus the dynamic loader
# DIR/Dockerfile copies it and sets PATH and GOPATH. Build it with
#   kubectl-build DIR --platform linux/amd64 -t kbuild.test/golang:1.19 -o type=image
# The result is cached: nothing is done when DIR/.complete names the same Go.
set -euo pipefail

cd "$(dirname "$0")/.."
dest=${1:-$PWD/target/fixtures/golang}
goroot=/usr/lib/go-1.19
busybox=${KBUILD_FIXTURES_DIR:-$PWD/target/fixtures}/busybox/amd64

if [[ ! -x $goroot/bin/go ]]; then
    echo "error: $goroot/bin/go not found; install Debian's golang-go (scripts/test.sh does)" >&2
    exit 1
fi
if [[ ! -x $busybox/bin/busybox ]]; then
    echo "error: $busybox/bin/busybox not found; run scripts/fixtures.sh" >&2
    exit 1
fi
stamp="$($goroot/bin/go version) $(stat -c %Y "$busybox/bin/busybox")"
if [[ -f $dest/.complete && $(cat "$dest/.complete") == "$stamp" ]]; then
    echo "$dest"
    exit 0
fi

rm -rf "$dest"
rootfs=$dest/rootfs
mkdir -p "$rootfs"
cp -a "$busybox/." "$rootfs/"

gr=$rootfs$goroot
mkdir -p "$gr/bin" "$gr/pkg/tool/linux_amd64"
cp -L "$goroot/VERSION" "$gr/"
cp -L "$goroot/bin/go" "$gr/bin/"
for tool in compile asm link cgo buildid pack; do
    cp -L "$goroot/pkg/tool/linux_amd64/$tool" "$gr/pkg/tool/linux_amd64/"
done
cp -rL "$goroot/pkg/include" "$gr/pkg/include"
# The standard library's sources, without what only its own tests read.
mkdir -p "$gr/src"
tar -C "$goroot/src/" --dereference --exclude=./cmd --exclude=testdata --exclude='*_test.go' \
    -cf - . | tar -C "$gr/src" -xf -

# `go` is dynamically linked (the tools are static): copy what ldd names,
# each at the path the loader looks for it, symlinks resolved.
for f in "$gr/bin/go" "$gr"/pkg/tool/linux_amd64/*; do
    ldd "$f" 2>/dev/null || true
done | grep -oE '/[^ ]+' | sort -u | while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done

cat > "$dest/Dockerfile" <<EOF
# A Go 1.19 toolchain for linux/amd64 (written by scripts/golang-image.sh).
FROM scratch
COPY rootfs/ /
ENV PATH=$goroot/bin:/bin GOPATH=/go HOME=/root
CMD ["go", "version"]
EOF
echo "$stamp" > "$dest/.complete"
echo "$dest"
