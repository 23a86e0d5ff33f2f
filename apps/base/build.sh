#!/usr/bin/env bash
# Build the registry-free base image swarmpool/base:bookworm (Debian minbase + python3 + pip) with debootstrap.
# Usage: apps/base/build.sh [--force]    (skips when the image already exists)
# SWARMPOOL_BASE_IMAGE names the image; SWARMPOOL_BASE_EXTRA adds Debian packages (comma-separated), for a variant
# such as the control image's base with iptables (apps/control/build.sh).
set -euo pipefail
source "$(cd "$(dirname "$0")" && pwd)/lib.sh"

IMAGE="${SWARMPOOL_BASE_IMAGE:-swarmpool/base:bookworm}"
SUITE="${SWARMPOOL_BASE_SUITE:-bookworm}"
# python3-pip: wheels with .data/ (jupyter, voila templates) need a real installer, not unzip.
PACKAGES="python3,python3-pip,ca-certificates${SWARMPOOL_BASE_EXTRA:+,$SWARMPOOL_BASE_EXTRA}"

skip_if_built base "$IMAGE" "$@"

command -v debootstrap >/dev/null || { echo "base: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
MIRROR=$(debian_mirror)
ROOTFS=$(mktemp -d /tmp/swarmpool-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT

start=$(date +%s)
echo "base: debootstrap $SUITE minbase (+$PACKAGES) from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
    | sed -u 's/^/base:   /'
# Slim the image: apt lists and caches are not needed at runtime.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
echo "base: importing into docker as $IMAGE"
tar -C "$ROOTFS" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1' \
    --change 'CMD ["python3"]' \
    - "$IMAGE" >/dev/null
echo "base: built $IMAGE in $(( $(date +%s) - start ))s ($(image_size "$IMAGE"))"
