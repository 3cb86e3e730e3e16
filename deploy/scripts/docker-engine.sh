#!/usr/bin/env bash
# Makes sure a Docker engine answers: installs Debian's docker.io when dockerd is missing and
# starts dockerd in the background when none is running (machines without systemd, such as
# CI containers). Does nothing where `docker info` already works.
set -euo pipefail

if docker info >/dev/null 2>&1; then
    exit 0
fi
if ! command -v dockerd >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io
fi
if ! docker info >/dev/null 2>&1; then
    log=${TWINSERVE_DOCKERD_LOG:-/var/log/twinserve-dockerd.log}
    echo "starting dockerd (log: $log)"
    nohup dockerd >"$log" 2>&1 &
    for _ in $(seq 60); do
        docker info >/dev/null 2>&1 && exit 0
        sleep 1
    done
    echo "dockerd did not answer within 60 s; see $log" >&2
    exit 1
fi
