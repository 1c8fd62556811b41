#!/bin/sh
# Make a base image ready for forgather (run by both Dockerfiles at build time, as root):
#   install_system.sh UID GID [DEBIAN_PACKAGE ...]
# - installs, with apt and only when something is missing, Python 3 with venv, tini, gosu, the
#   passwd tools (usermod/groupmod), CA certificates and the extra packages named; a base that has
#   them all (images/build_base.sh) needs no apt and no network;
# - creates the user and group `forgather` with UID/GID, taking over a user or group that already
#   has those ids (Ubuntu 24.04 images ship `ubuntu` with 1000:1000);
# - creates /workspace (owned by forgather) and /opt/forgather.
set -eu

uid=$1
gid=$2
shift 2
if [ "$uid" = 0 ] || [ "$gid" = 0 ]; then
    echo "install_system.sh: UID and GID must not be 0 (the image runs as a non-root user)" >&2
    exit 2
fi

missing=""
need() { missing="$missing $*"; }
python3 -m venv --without-pip /tmp/probe-venv >/dev/null 2>&1 \
    && python3 -c 'import ensurepip, sys; sys.exit(0 if ensurepip.version() else 1)' >/dev/null 2>&1 \
    || need python3 python3-venv
rm -rf /tmp/probe-venv
command -v tini >/dev/null 2>&1 || need tini
command -v gosu >/dev/null 2>&1 || need gosu
command -v usermod >/dev/null 2>&1 || need passwd
[ -s /etc/ssl/certs/ca-certificates.crt ] || need ca-certificates
for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || need "$package"
done

if [ -n "$missing" ]; then
    echo "install_system.sh: installing with apt:$missing" >&2
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "install_system.sh: missing$missing and this base has no apt-get" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086
    apt-get install -y --no-install-recommends $missing
    apt-get clean
    rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/apt /var/log/dpkg.log
else
    echo "install_system.sh: the base has everything; no apt" >&2
fi

group=$(getent group "$gid" | cut -d: -f1 || true)
if [ -z "$group" ]; then
    groupadd --gid "$gid" forgather
elif [ "$group" != forgather ]; then
    groupmod --new-name forgather "$group"
fi
user=$(getent passwd "$uid" | cut -d: -f1 || true)
if [ -z "$user" ]; then
    useradd --uid "$uid" --gid "$gid" --create-home --home-dir /home/forgather --shell /bin/bash forgather
elif [ "$user" != forgather ]; then
    usermod --login forgather --gid "$gid" --home /home/forgather --move-home --shell /bin/bash "$user"
fi
mkdir -p /home/forgather /workspace /opt/forgather
chown "$uid:$gid" /home/forgather /workspace
gosu forgather true
