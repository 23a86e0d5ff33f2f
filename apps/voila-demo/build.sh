#!/usr/bin/env bash
# Build swarmpool/voila-demo:latest offline (base image first if missing). Usage: apps/voila-demo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../base/lib.sh"
IMAGE="${SWARMPOOL_VOILA_IMAGE:-swarmpool/voila-demo:latest}"

skip_if_built voila-demo "$IMAGE" "$@"
build_app voila-demo "$IMAGE" "$HERE" -r "$HERE/requirements.txt"
