#!/usr/bin/env bash
# Build swarmpool/tiny:latest offline: busybox's httpd serving a page and /healthz, about 1 MiB of memory per
# instance (the scale bench runs hundreds). Usage: apps/tiny/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../base/lib.sh"
IMAGE="${SWARMPOOL_TINY_IMAGE:-swarmpool/tiny:latest}"

skip_if_built tiny "$IMAGE" "$@"
start=$(date +%s)
"$SWARMPOOL_BASE_DIR/build.sh"
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
cp -r "$HERE/Dockerfile" "$HERE/www" "$context/"
# Debian's statically linked busybox, from apt's cache or the host's Debian mirror (as the base image's packages)
cached=$(ls /var/cache/apt/archives/busybox-static_*.deb 2>/dev/null | tail -n 1 || true)
if [[ -n "$cached" ]]; then
    cp "$cached" "$context/busybox-static.deb"
else
    echo "tiny: apt-get download busybox-static"
    (cd "$context" && apt-get download -q busybox-static >/dev/null 2>&1 && mv busybox-static_*.deb busybox-static.deb)
fi
echo "tiny: docker build $IMAGE"
DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$context" >/dev/null
echo "tiny: built $IMAGE in $(( $(date +%s) - start ))s ($(image_size "$IMAGE"))"
