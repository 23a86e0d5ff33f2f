#!/usr/bin/env bash
# Build swarmpool/voila-demo:latest offline (base image first if missing; rebuilt when its inputs changed). Usage: apps/voila-demo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../base/lib.sh"
IMAGE="${SWARMPOOL_VOILA_IMAGE:-swarmpool/voila-demo:latest}"

# rebuilt when what the image is made of changes (a stale image would keep a fixed bug on machines that have it)
SWARMPOOL_INPUTS=$(inputs_digest "$HERE" Dockerfile requirements.txt app.ipynb start.sh)
export SWARMPOOL_INPUTS
skip_if_current voila-demo "$IMAGE" "$SWARMPOOL_INPUTS" "$@"
build_app voila-demo "$IMAGE" "$HERE" -r "$HERE/requirements.txt"
