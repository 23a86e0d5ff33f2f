#!/usr/bin/env bash
# Build swarmpool/voila-demo:latest offline (base image first if missing). Usage: apps/voila-demo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
IMAGE="${SWARMPOOL_VOILA_IMAGE:-swarmpool/voila-demo:latest}"

if [[ "${1:-}" != "--force" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "voila-demo: $IMAGE exists, skipping (use --force to rebuild)"
    exit 0
fi
start=$(date +%s)
"$HERE/../base/build.sh"
# Reuse downloaded wheels when they match requirements.txt; pip download is the slow part.
if ! cmp -s "$HERE/requirements.txt" "$HERE/wheels/requirements.txt" 2>/dev/null \
    || ! compgen -G "$HERE/wheels/*.whl" >/dev/null; then
    rm -rf "$HERE/wheels"
    "$HERE/../base/pip-offline.sh" "$HERE" -r "$HERE/requirements.txt"
else
    echo "voila-demo: wheels up to date in $HERE/wheels"
fi
echo "voila-demo: docker build $IMAGE"
DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$HERE" >/dev/null
echo "voila-demo: built $IMAGE in $(( $(date +%s) - start ))s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MiB", $1/1048576}'))"
