#!/usr/bin/env bash
# Prepares the build context of the builder pod image (deploy/builder/Dockerfile)
# and prints the context directory on stdout:
#
#   scripts/builder-pod-image.sh [DIR]          # default: target/builder-image
#   kubectl-build DIR -t REGISTRY/kubectl-build/builder:VERSION --push
#
# DIR/rootfs/ becomes the image's filesystem:
#   usr/local/bin/kubectl-build    the binary ($KUBECTL_BUILD_BINARY, default
#                                  target/release/kubectl-build: run
#                                  `cargo build --release` first)
#   lib/..., lib64/..., usr/lib/... the shared libraries it links (found with
#                                  ldd) and the dynamic loader
#   usr/bin/qemu-*-static          QEMU user emulation (Debian's qemu-user-static) for
#                                  the supported platforms other than the host's
#   usr/lib/binfmt.d/qemu-*.conf   their binfmt_misc definitions
#   tmp/ (1777), run/kubectl-build/, var/lib/kubectl-build/
# DIR/Dockerfile is deploy/builder/Dockerfile. The image's architecture is the
# binary's: build it on (or cross-compile for) each architecture you run
# builder pods on.
set -euo pipefail

cd "$(dirname "$0")/.."
dest=${1:-$PWD/target/builder-image}
bin=${KUBECTL_BUILD_BINARY:-$PWD/target/release/kubectl-build}

if [[ ! -x $bin ]]; then
    echo "error: $bin not found; run \`cargo build --release\` or set KUBECTL_BUILD_BINARY" >&2
    exit 1
fi
if ! compgen -G '/usr/bin/qemu-*-static' >/dev/null; then
    echo "error: no /usr/bin/qemu-*-static; install Debian's qemu-user-static" >&2
    exit 1
fi

rm -rf "$dest.tmp"
root=$dest.tmp/rootfs
mkdir -p "$root/usr/local/bin" "$root/usr/bin" "$root/usr/lib/binfmt.d" \
    "$root/tmp" "$root/run/kubectl-build" "$root/var/lib/kubectl-build"
chmod 1777 "$root/tmp"
install -m 0755 "$bin" "$root/usr/local/bin/kubectl-build"

# The libraries the binary links, at the paths the loader looks them up.
ldd "$bin" | awk '/=> \//{print $3} /^[ \t]*\/[^ ]+ \(/{print $1}' | while read -r lib; do
    real=$(readlink -f "$lib")
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$real" "$root$lib"
done

# The emulators of the platforms kubectl-build supports, except the host's own.
host=$(uname -m)
for arch in x86_64 i386 aarch64 arm ppc64le s390x; do
    [[ $arch == "$host" ]] && continue
    q=/usr/bin/qemu-$arch-static
    [[ -x $q ]] || { echo "error: $q not found; install Debian's qemu-user-static" >&2; exit 1; }
    install -m 0755 "$q" "$root$q"
    conf=/usr/lib/binfmt.d/qemu-$arch.conf
    if [[ -e $conf ]]; then install -m 0644 "$conf" "$root$conf"; fi
done

cp deploy/builder/Dockerfile "$dest.tmp/Dockerfile"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
