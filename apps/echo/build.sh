#!/usr/bin/env bash
# Build swarmpool/echo:latest offline (base image first if missing). Usage: apps/echo/build.sh [--force]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
source "$HERE/../base/lib.sh"
IMAGE="${SWARMPOOL_ECHO_IMAGE:-swarmpool/echo:latest}"

skip_if_built echo "$IMAGE" "$@"
build_app echo "$IMAGE" "$HERE" aiohttp
