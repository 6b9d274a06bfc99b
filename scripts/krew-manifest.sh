#!/usr/bin/env bash
# Writes the krew manifest of a release to stdout: deploy/krew/build.yaml with
# the version and, for each platform, the download URI and the sha256 of its
# tarball (a .tar.gz holding kubectl-build and LICENSE at its top).
#
#   scripts/krew-manifest.sh VERSION URI_BASE linux/amd64=DIR/kubectl-build-linux-amd64.tar.gz \
#       linux/arm64=DIR/kubectl-build-linux-arm64.tar.gz > build.yaml
#
# URI_BASE is where the release publishes its files; each platform's uri is
# URI_BASE/ followed by its tarball's file name. Every platform of the template
# must be given, and each tarball must contain an executable kubectl-build.
set -euo pipefail

template=$(dirname "$0")/../deploy/krew/build.yaml

if [[ $# -lt 3 ]]; then
    sed -n '2,12p' "$0" >&2
    exit 2
fi
version=$1 base=${2%/}
shift 2
[[ $version == v* ]] || { echo "error: the version must start with v (krew wants semver): $version" >&2; exit 1; }

declare -A uri sum
for arg in "$@"; do
    platform=${arg%%=*} file=${arg#*=}
    [[ $platform == */* && -f $file ]] || { echo "error: expected OS/ARCH=TARBALL, got $arg" >&2; exit 1; }
    tar -tzf "$file" | grep -qx 'kubectl-build' \
        || { echo "error: $file has no kubectl-build at its top" >&2; exit 1; }
    uri[$platform]="$base/$(basename "$file")"
    sum[$platform]=$(sha256sum "$file" | cut -d' ' -f1)
done

# Each platform entry of the template gets its uri and sha256 after `bin:`.
os='' arch='' out=''
while IFS= read -r line; do
    case $line in
        "  version: "*) line="  version: $version" ;;
        *"os: "*) os=${line##*os: } ;;
        *"arch: "*) arch=${line##*arch: } ;;
    esac
    out+="$line"$'\n'
    if [[ $line == "    bin: "* ]]; then
        p="$os/$arch"
        [[ -n ${uri[$p]:-} ]] || { echo "error: no tarball given for $p" >&2; exit 1; }
        out+="    uri: ${uri[$p]}"$'\n'"    sha256: ${sum[$p]}"$'\n'
        unset "uri[$p]"
    fi
done < "$template"
for p in "${!uri[@]}"; do
    echo "error: $p is not a platform of $template" >&2
    exit 1
done
printf '%s' "$out"
