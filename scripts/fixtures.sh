#!/usr/bin/env bash
# Prepares the busybox fixtures the integration tests build images from, under
# target/fixtures/ (never committed):
#
#   debs/busybox-static_*_<debian-arch>.deb   Debian's static busybox, one per architecture
#   rootfs/<debian-arch>/                     each .deb unpacked (bin/busybox is what is used)
#   busybox/<platform-dir>/                   one COPY source per platform: bin/busybox, applet
#                                             symlinks (bin/sh -> busybox, ...), etc/passwd,
#                                             etc/group, tmp/
#   busybox/Dockerfile                        COPY-only multi-platform busybox image
#
# Platform directories are named ${TARGETARCH}${TARGETVARIANT}, the two build
# args BuildKit sets for a target platform, so one `COPY` picks the right one:
#
#   platform        TARGETARCH TARGETVARIANT dir      Debian arch
#   linux/amd64     amd64      -             amd64    amd64
#   linux/arm64     arm64      -             arm64    arm64
#   linux/arm/v7    arm        v7            armv7    armhf
#   linux/arm/v6    arm        v6            armv6    armel   (Debian armel targets ARMv5TE,
#                                                             so it runs on v6 too)
#   linux/386       386        -             386      i386
#   linux/ppc64le   ppc64le    -             ppc64le  ppc64el
#   linux/s390x     s390x      -             s390x    s390x
#
# The .debs come from the Debian mirror this machine's apt already uses, read
# at run time from its sources (no host name is written in this repository), by
# an apt-get run whose sources, lists, cache and status all live under
# target/fixtures/apt/: the system's apt state is never read or written.
# Every step is skipped when its result is already there.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD/target/fixtures
aptdir=$root/apt
debdir=$root/debs

# Debian arch -> platform directory (see the table above). Order is the order
# of the Dockerfile's platform list.
declare -A DIR_OF=(
    [amd64]=amd64 [arm64]=arm64 [armhf]=armv7 [armel]=armv6
    [i386]=386 [ppc64el]=ppc64le [s390x]=s390x
)
ARCHES=(amd64 arm64 armhf armel i386 ppc64el s390x)
# Applets given a symlink in bin/; anything else still runs as `busybox APPLET`.
APPLETS=(sh ash cat cp echo env false id ls mkdir mv rm sleep test true uname wc grep
         sed head tail touch chmod chown ln pwd whoami printf)
# Bump when the layout of busybox/<dir>/ changes so cached trees are rebuilt.
LAYOUT_VERSION=1

start=$(date +%s)

deb_of() { # debian-arch -> path of its downloaded .deb, or nothing
    local f
    for f in "$debdir"/busybox-static_*_"$1".deb; do
        [[ -e $f ]] && { echo "$f"; return; }
    done
}

# The first `URIs:` value of the deb822 stanza whose Suites include bookworm,
# else the URI of the first `deb` line for bookworm in sources.list.
mirror_uri() {
    local uri=""
    if [[ -r /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '
            function flush() { if (!found && has && uris != "") { print uris; found = 1 } has = 0; uris = "" }
            /^[ \t]*$/ { flush(); next }
            /^#/ { next }
            tolower($1) == "uris:" { if (uris == "") uris = $2 }
            tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") has = 1 }
            END { flush() }
        ' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $uri && -r /etc/apt/sources.list ]]; then
        uri=$(awk '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == "bookworm") { print $i; exit }
            }
        ' /etc/apt/sources.list)
    fi
    echo "$uri"
}

download_debs() {
    local missing=() arch
    for arch in "${ARCHES[@]}"; do
        [[ -n $(deb_of "$arch") ]] || missing+=("$arch")
    done
    if ((${#missing[@]} == 0)); then
        echo "debs: cached (${ARCHES[*]})"
        return
    fi
    echo "debs: downloading busybox-static for ${missing[*]}"

    local uri
    uri=$(mirror_uri)
    if [[ -z $uri ]]; then
        echo "error: no bookworm mirror found in /etc/apt/sources.list.d/debian.sources" \
             "or /etc/apt/sources.list; add one there (apt's own sources are only read)" >&2
        exit 1
    fi
    local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    if [[ ! -r $keyring ]]; then
        echo "error: $keyring is missing; install the debian-archive-keyring package" >&2
        exit 1
    fi

    mkdir -p "$aptdir"/{sources.list.d,preferences.d,lists/partial,cache/archives/partial,state} "$debdir"
    local archlist
    archlist=$(IFS=,; echo "${ARCHES[*]}")
    echo "deb [arch=$archlist signed-by=$keyring target=Packages] $uri bookworm main" \
        >"$aptdir/sources.list"
    : >"$aptdir/status"

    local opts=(
        -o "Dir::Etc::SourceList=$aptdir/sources.list"
        -o "Dir::Etc::SourceParts=$aptdir/sources.list.d"
        -o "Dir::Etc::Preferences=$aptdir/preferences"
        -o "Dir::Etc::PreferencesParts=$aptdir/preferences.d"
        -o "Dir::State=$aptdir/state"
        -o "Dir::State::Lists=$aptdir/lists"
        -o "Dir::State::status=$aptdir/status"
        -o "Dir::Cache=$aptdir/cache"
        -o "Dir::Cache::pkgcache=pkgcache.bin"
        -o "Dir::Cache::srcpkgcache=srcpkgcache.bin"
        -o "Acquire::Languages=none"
        -o "Acquire::GzipIndexes=false"
        # the files are written as root into the work tree; apt's _apt sandbox
        # user may not be able to reach it
        -o "APT::Sandbox::User=root"
        -o "APT::Architecture=amd64"
    )
    for arch in "${ARCHES[@]}"; do
        opts+=(-o "APT::Architectures::=$arch")
    done

    local t0=$SECONDS
    apt-get "${opts[@]}" -q update
    echo "debs: index update took $((SECONDS - t0))s"
    (cd "$debdir" && apt-get "${opts[@]}" -q download "${missing[@]/#/busybox-static:}")
    # The indexes (about 650 MB unpacked) are only needed for this download.
    rm -rf "$aptdir/lists" "$aptdir/cache"
}

# Unpacks each .deb into rootfs/<arch>/ unless it is already unpacked from it.
extract() {
    local arch deb dest
    for arch in "${ARCHES[@]}"; do
        deb=$(deb_of "$arch")
        dest=$root/rootfs/$arch
        if [[ -e $dest/.from && $(cat "$dest/.from") == "$(basename "$deb")" && -x $dest/bin/busybox ]]; then
            continue
        fi
        rm -rf "$dest"
        mkdir -p "$dest"
        dpkg-deb -x "$deb" "$dest"
        basename "$deb" >"$dest/.from"
        echo "rootfs/$arch: unpacked $(basename "$deb")"
    done
}

# Builds busybox/<dir>/ for one Debian arch from its rootfs.
make_context() {
    local arch=$1 dir=$2 tmp
    tmp=$(mktemp -d "$root/busybox/.tmp.XXXXXX")
    chmod 0755 "$tmp"
    mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/tmp"
    chmod 1777 "$tmp/tmp"
    install -m 0755 "$root/rootfs/$arch/bin/busybox" "$tmp/bin/busybox"
    local applet
    for applet in "${APPLETS[@]}"; do
        ln -s busybox "$tmp/bin/$applet"
    done
    printf '%s\n' 'root:x:0:0:root:/root:/bin/sh' 'nobody:x:65534:65534:nobody:/nonexistent:/bin/false' \
        >"$tmp/etc/passwd"
    printf '%s\n' 'root:x:0:' 'nogroup:x:65534:' >"$tmp/etc/group"
    chmod 0644 "$tmp/etc/passwd" "$tmp/etc/group"
    echo "$LAYOUT_VERSION $(cat "$root/rootfs/$arch/.from")" >"$root/busybox/.$dir.stamp.new"
    rm -rf "${root:?}/busybox/$dir"
    mv "$tmp" "$root/busybox/$dir"
    mv "$root/busybox/.$dir.stamp.new" "$root/busybox/.$dir.stamp"
    echo "busybox/$dir: prepared from $arch"
}

contexts() {
    mkdir -p "$root/busybox"
    local arch dir
    for arch in "${ARCHES[@]}"; do
        dir=${DIR_OF[$arch]}
        local want
        want="$LAYOUT_VERSION $(cat "$root/rootfs/$arch/.from")"
        if [[ -e $root/busybox/.$dir.stamp && $(cat "$root/busybox/.$dir.stamp") == "$want" \
              && -x $root/busybox/$dir/bin/busybox ]]; then
            continue
        fi
        make_context "$arch" "$dir"
    done
    cat >"$root/busybox/Dockerfile.new" <<'DOCKERFILE'
# Multi-platform busybox made only of COPY (written by scripts/fixtures.sh).
# Platforms: linux/amd64 linux/arm64 linux/arm/v7 linux/arm/v6 linux/386
#            linux/ppc64le linux/s390x
FROM scratch
ARG TARGETARCH
ARG TARGETVARIANT
COPY ${TARGETARCH}${TARGETVARIANT}/ /
ENV PATH=/bin
CMD ["sh"]
DOCKERFILE
    if cmp -s "$root/busybox/Dockerfile.new" "$root/busybox/Dockerfile"; then
        rm "$root/busybox/Dockerfile.new"
    else
        mv "$root/busybox/Dockerfile.new" "$root/busybox/Dockerfile"
        echo "busybox/Dockerfile: written"
    fi
}

# Runs each busybox once (natively or through qemu-user-static when it is
# installed) so a bad download or extraction shows here, not in a test.
check() {
    local arch dir bin qemu out
    declare -A QEMU_OF=([arm64]=aarch64 [armhf]=arm [armel]=arm [i386]=i386
                        [ppc64el]=ppc64le [s390x]=s390x)
    for arch in "${ARCHES[@]}"; do
        dir=${DIR_OF[$arch]}
        bin=$root/busybox/$dir/bin/busybox
        qemu=""
        if [[ $arch != amd64 ]]; then
            qemu=$(command -v "qemu-${QEMU_OF[$arch]}-static" || true)
            if [[ -z $qemu ]]; then
                printf '  %-8s %-8s %6s  not run (qemu-%s-static missing)\n' \
                    "$dir" "$arch" "$(du -k "$bin" | cut -f1)K" "${QEMU_OF[$arch]}"
                continue
            fi
        fi
        if ! out=$($qemu "$bin" echo ok 2>&1) || [[ $out != ok ]]; then
            echo "error: $bin ($arch) does not run: $out" >&2
            exit 1
        fi
        printf '  %-8s %-8s %6s  runs\n' "$dir" "$arch" "$(du -k "$bin" | cut -f1)K"
    done
}

download_debs
extract
contexts
echo "platform dirs (dir, Debian arch, busybox size):"
check
echo "sizes: debs $(du -sh "$debdir" | cut -f1), rootfs $(du -sh "$root/rootfs" | cut -f1)," \
     "busybox contexts $(du -sh "$root/busybox" | cut -f1)"
echo "fixtures ready in $root ($(($(date +%s) - start))s)"
