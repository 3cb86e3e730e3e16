#!/usr/bin/env bash
# Builds a Python base image from Debian packages alone (debootstrap + docker import), for
# machines that reach Debian and PyPI but no image registry. The root filesystem tarball is
# cached, so a later run only re-imports it (seconds), and an image already present is kept.
#
#   deploy/scripts/debootstrap-base.sh [IMAGE]    # default twinserve-base:bookworm
#
# The image trusts this machine's CA bundle (/etc/ssl/certs/ca-certificates.crt), so pip inside
# builds works behind the same TLS-inspecting proxy as pip here.
set -euo pipefail

image=${1:-twinserve-base:bookworm}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,python3-pip,ca-certificates
cache=${TWINSERVE_DEPLOY_CACHE:-$HOME/.cache/twinserve-deploy}
tarball=$cache/$suite-$(echo "$packages" | tr ',' '-').tar

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "$image: present"
    exit 0
fi

if [[ ! -s $tarball ]]; then
    command -v debootstrap >/dev/null || {
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap
    }
    mkdir -p "$cache"
    root=$(mktemp -d "$cache/rootfs.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror"
    # This machine's trust store (it may hold a proxy's CA that public images lack).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
fi

docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$tarball" "$image"
echo "$image: imported from $tarball"
