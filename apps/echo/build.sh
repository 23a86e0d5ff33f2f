#!/usr/bin/env bash
# Build swarmpool/echo:latest offline (base image first if missing). Usage: apps/echo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE="${SWARMPOOL_ECHO_IMAGE:-swarmpool/echo:latest}"

if [[ "${1:-}" != "--force" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "echo: $IMAGE exists, skipping (use --force to rebuild)"
    exit 0
fi
start=$(date +%s)
"$HERE/../base/build.sh"
"$HERE/../base/pip-offline.sh" "$HERE" aiohttp
echo "echo: docker build $IMAGE"
DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$HERE" >/dev/null
echo "echo: built $IMAGE in $(( $(date +%s) - start ))s"
