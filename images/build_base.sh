#!/usr/bin/env bash
# Build an offline Debian base image (debootstrap + docker import) for air-gapped hosts and tests.
#
#   images/build_base.sh [--suite bookworm] [--mirror URL] [--include pkg,pkg] [--tag NAME:TAG]
#                        [--keyring FILE]
#
# The packages are checked against the Debian archive's signing keys (--keyring, default
# /usr/share/keyrings/debian-archive-keyring.gpg from the debian-archive-keyring package); without
# the keyring the build stops instead of installing unverified packages.
#
# Prints the image name (NAME:TAG) on stdout; everything else goes to stderr. Idempotent: the image
# tag and the cached root filesystem are keyed by the inputs (suite, mirror, packages, this script),
# so a rerun with the same inputs only checks that the image exists (or re-imports the cached tarball).
# Needs root, debootstrap and a Docker engine; network only to the Debian mirror, only on a cold cache.
set -euo pipefail

SUITE=bookworm
MIRROR=http://deb.debian.org/debian
PACKAGES="python3 python3-venv python3-pip tini gosu ca-certificates procps iproute2 netbase passwd"
EXTRA=""
TAG=""
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
DOCKER=${DOCKER:-$(command -v /usr/bin/docker || command -v docker)}
CACHE_ROOT=${FORGATHER_IMAGES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/forgather-images}

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --suite) SUITE=$2; shift 2 ;;
        --mirror) MIRROR=$2; shift 2 ;;
        --include) EXTRA=$2; shift 2 ;;
        --tag) TAG=$2; shift 2 ;;
        --keyring) KEYRING=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build_base.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

log() { echo "build_base: $*" >&2; }

packages=$(echo "$PACKAGES ${EXTRA//,/ }" | tr ' ' '\n' | sed '/^$/d' | sort -u | paste -sd, -)
key=$( { echo "suite=$SUITE mirror=$MIRROR packages=$packages"; cat "$0"; } | sha256sum | cut -c1-12)
TAG=${TAG:-forgather-base:$SUITE-$key}
cache="$CACHE_ROOT/base-$key"
tarball="$cache/rootfs.tar"

if "$DOCKER" image inspect "$TAG" >/dev/null 2>&1; then
    log "$TAG exists"
    echo "$TAG"
    exit 0
fi

if [ ! -s "$tarball" ]; then
    command -v debootstrap >/dev/null || { log "debootstrap not found (apt-get install -y debootstrap)"; exit 1; }
    [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
    [ -s "$KEYRING" ] || { log "no keyring $KEYRING to check the packages' signatures (apt-get install -y debian-archive-keyring, or --keyring FILE)"; exit 1; }
    mkdir -p "$cache"
    rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$rootfs" "$tarball.tmp"' EXIT
    log "debootstrap --variant=minbase $SUITE ($packages) from $MIRROR, signatures checked with $KEYRING"
    debootstrap --variant=minbase --keyring="$KEYRING" --include="$packages" "$SUITE" "$rootfs" "$MIRROR" \
        >"$cache/debootstrap.log" 2>&1 || { tail -n 30 "$cache/debootstrap.log" >&2; exit 1; }
    # Lean and registry-free: no package caches or lists (Dockerfiles run apt-get update when they
    # need apt), no machine identity, a policy that keeps services from starting during apt installs.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/tmp/* \
           "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
    # Documentation and translations go; license files stay.
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    : > "$rootfs/etc/machine-id"
    printf '#!/bin/sh\nexit 101\n' > "$rootfs/usr/sbin/policy-rc.d"
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    { printf 'path-exclude /usr/share/%s/*\n' doc man info locale
      printf 'path-include %s\n' /usr/share/locale/locale.alias '/usr/share/doc/*/copyright'; } > "$rootfs/etc/dpkg/dpkg.cfg.d/01-forgather-nodoc"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
    trap - EXIT
fi

log "docker import $tarball -> $TAG"
"$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["bash"]' \
    --change "LABEL ai.forgather.base.suite=$SUITE ai.forgather.base.key=$key" \
    "$tarball" "$TAG" >&2
echo "$TAG"
