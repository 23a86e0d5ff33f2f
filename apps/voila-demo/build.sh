#!/usr/bin/env bash
# Build swarmpool/voila-demo:latest offline (base image first if missing; rebuilt when its inputs changed). Usage: apps/voila-demo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../base/lib.sh"
IMAGE="${SWARMPOOL_VOILA_IMAGE:-swarmpool/voila-demo:latest}"

# rebuilt when what the image is made of changes (a stale image would keep a fixed bug on machines that have it);
# not exported: the base image's own build.sh, run from build_app, must not compare against it
SWARMPOOL_INPUTS=$(inputs_digest "$HERE" Dockerfile requirements.txt app.ipynb start.sh)
skip_if_built voila-demo "$IMAGE" "$@"
build_app voila-demo "$IMAGE" "$HERE" -r "$HERE/requirements.txt"
