#!/usr/bin/env bash
# Build swarmpool/pluto-demo:latest offline: Debian bullseye's julia 1.5.3 (debootstrap) + Pluto 0.17.7 and
# PlutoUI 0.7.51 from a directory of source archives (default: ../shared/pluto beside the repository).
# Usage: apps/pluto-demo/build.sh [--force] [--full] [--sources DIR]     (or SWARMPOOL_PLUTO_SOURCES=DIR)
# --full also rebuilds the Julia base image and every Docker layer (the downloaded .debs stay cached).
# DIR holds <Name>.tar.gz archives that each unpack into <Name>/ (see docs/pluto.md); every one of them is
# developed into the image's Julia environment, so a teacher adds a package by adding its archive.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$HERE/../base/lib.sh"

IMAGE="${SWARMPOOL_PLUTO_IMAGE:-swarmpool/pluto-demo:latest}"
JULIA_BASE="${SWARMPOOL_JULIA_BASE_IMAGE:-swarmpool/julia-base:bullseye}"
SOURCES="${SWARMPOOL_PLUTO_SOURCES:-$REPO/../shared/pluto}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/swarmpool"
IONICONS_VERSION=5.5.1  # the version Pluto 0.17.7's CSS asks a CDN for

FORCE=()
FULL=0
while (($#)); do
    case $1 in
        --force) FORCE=(--force); shift ;;
        --full) FORCE=(--force); FULL=1; shift ;;
        --sources) SOURCES=$2; shift 2 ;;
        --sources=*) SOURCES=${1#--sources=}; shift ;;
        *) echo "pluto-demo: unknown argument $1 (usage: build.sh [--force] [--full] [--sources DIR])" >&2; exit 2 ;;
    esac
done

skip_if_built pluto-demo "$IMAGE" "${FORCE[@]}"

if ! compgen -G "$SOURCES/Pluto.tar.gz" >/dev/null; then
    # No archives: the usual way (julia's own Pkg server and GitHub) would need the network; not tested here.
    echo "pluto-demo: no Pluto sources in $SOURCES (need Pluto.tar.gz and its dependencies; see docs/pluto.md)." \
         "Give --sources DIR or SWARMPOOL_PLUTO_SOURCES, or build the registry route: docker build -f $HERE/Dockerfile.registry $HERE" >&2
    exit 3
fi
SOURCES=$(cd "$SOURCES" && pwd)
start=$(date +%s)

# ---- 1. the Julia base: bullseye minbase + julia (the only Debian suite that has one), kept as its own image ----
if ((FULL)) || ! docker image inspect "$JULIA_BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "pluto-demo: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
    MIRROR="${SWARMPOOL_BULLSEYE_MIRROR:-$(debian_mirror)}"
    DEBS="$CACHE/debootstrap/bullseye"  # downloaded .debs stay here: a rebuild downloads nothing
    mkdir -p "$DEBS"
    ROOTFS=$(mktemp -d /tmp/swarmpool-julia.XXXXXX)
    trap 'rm -rf "$ROOTFS"' EXIT
    echo "pluto-demo: debootstrap bullseye minbase (+julia,curl,ca-certificates) from $MIRROR (cache $DEBS)"
    debootstrap --variant=minbase --cache-dir="$DEBS" --include=julia,curl,ca-certificates \
        bullseye "$ROOTFS" "$MIRROR" | sed -u 's/^/pluto-demo:   /'
    rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* \
        "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/julia/test
    tar -C "$ROOTFS" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["julia"]' - "$JULIA_BASE" >/dev/null
    rm -rf "$ROOTFS"
    trap - EXIT
    echo "pluto-demo: built $JULIA_BASE in $(( $(date +%s) - start ))s ($(image_size "$JULIA_BASE"))"
fi

# ---- 2. the build context: the archives, the ionicons Pluto's CSS would fetch from a CDN, the app ----
CONTEXT=$(mktemp -d /tmp/swarmpool-pluto.XXXXXX)
trap 'rm -rf "$CONTEXT"' EXIT
mkdir "$CONTEXT/sources"
cp "$SOURCES"/*.tar.gz "$CONTEXT/sources/"
rm -f "$CONTEXT"/sources/ionicons-*.tgz "$CONTEXT"/sources/ionicons-*.tar.gz
ICONS="ionicons-$IONICONS_VERSION.tgz"
if [[ -f "$SOURCES/$ICONS" ]]; then
    cp "$SOURCES/$ICONS" "$CONTEXT/$ICONS"
else
    mkdir -p "$CACHE/npm"
    if [[ ! -f "$CACHE/npm/$ICONS" ]]; then
        echo "pluto-demo: npm pack ionicons@$IONICONS_VERSION (once; kept in $CACHE/npm)"
        (cd "$CACHE/npm" && npm pack --silent "ionicons@$IONICONS_VERSION" >/dev/null) \
            || echo "pluto-demo: WARNING: no $ICONS (npm unreachable, none in $SOURCES): the editor's icons will be missing" >&2
    fi
    [[ -f "$CACHE/npm/$ICONS" ]] && cp "$CACHE/npm/$ICONS" "$CONTEXT/$ICONS"
fi
[[ -f "$CONTEXT/$ICONS" ]] || tar -czf "$CONTEXT/$ICONS" -T /dev/null  # an empty archive: no icons, still no CDN
cp "$HERE"/Dockerfile "$HERE"/setup.jl "$HERE"/start.jl "$HERE"/webapp.jl "$CONTEXT/"

echo "pluto-demo: docker build $IMAGE from $SOURCES ($(ls "$CONTEXT"/sources | wc -l) archives)"
NO_CACHE=()
((FULL)) && NO_CACHE=(--no-cache)
DOCKER_BUILDKIT=0 docker build --quiet "${NO_CACHE[@]}" --build-arg "JULIA_BASE=$JULIA_BASE" --build-arg "ICONS=$ICONS" \
    -t "$IMAGE" "$CONTEXT" >/dev/null
echo "pluto-demo: built $IMAGE in $(( $(date +%s) - start ))s ($(image_size "$IMAGE"))"
