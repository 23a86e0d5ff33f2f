#!/usr/bin/env bash
# Build swarmpool/pluto-demo:latest offline: Debian bullseye's julia 1.5.3 (debootstrap) + Pluto 0.17.7 and
# PlutoUI 0.7.51 from a directory of source archives (default: ../shared/pluto beside the repository).
# Usage: apps/pluto-demo/build.sh [--force] [--full] [--sources DIR] [--tag IMAGE]  (or SWARMPOOL_PLUTO_SOURCES=DIR)
# --full also rebuilds the Julia base image and every Docker layer (the downloaded .debs stay cached).
# DIR holds <Name>.tar.gz archives that each unpack into <Name>/ (see docs/pluto.md); every one of them is
# developed into the image's Julia environment, so a teacher adds a package by adding its archive.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
source "$HERE/../base/lib.sh"

IMAGE="${SWARMPOOL_PLUTO_IMAGE:-swarmpool/pluto-demo:latest}"
JULIA_BASE="${SWARMPOOL_JULIA_BASE_IMAGE:-swarmpool/julia-base:bullseye}"
JULIA_BUILDER="${SWARMPOOL_JULIA_BUILDER_IMAGE:-swarmpool/julia-builder:bullseye}"  # + binutils: build stage only
SOURCES="${SWARMPOOL_PLUTO_SOURCES:-$REPO/../shared/pluto}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/swarmpool"
# the system image's CPU target (Dockerfile's default: PackageCompiler's portable x86_64 one); "generic" alone
# compiles in about half the time and runs on any x86-64 too
CPU_TARGET="${SWARMPOOL_PLUTO_CPU_TARGET:-}"
IONICONS_VERSION=5.5.1  # the version Pluto 0.17.7's CSS asks a CDN for

FORCE=()
FULL=0
while (($#)); do
    case $1 in
        --force) FORCE=(--force); shift ;;
        --full) FORCE=(--force); FULL=1; shift ;;
        --sources) SOURCES=$2; shift 2 ;;
        --tag) IMAGE=$2; shift 2 ;;
        --tag=*) IMAGE=${1#--tag=}; shift ;;
        --sources=*) SOURCES=${1#--sources=}; shift ;;
        *) echo "pluto-demo: unknown argument $1 (usage: build.sh [--force] [--full] [--sources DIR] [--tag IMAGE])" >&2; exit 2 ;;
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

# ---- 1. the Julia base: bullseye minbase + julia (the only Debian suite that has one), kept as its own image;
#         and the builder: the same plus binutils, whose linker makes the system image (a build stage only) ----
# bullseye_image IMAGE PACKAGES: debootstrap bullseye minbase with PACKAGES and import it as IMAGE.
bullseye_image() {
    local image=$1 packages=$2 rootfs
    command -v debootstrap >/dev/null || { echo "pluto-demo: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 1; }
    MIRROR="${SWARMPOOL_BULLSEYE_MIRROR:-$(debian_mirror)}"
    DEBS="$CACHE/debootstrap/bullseye"  # downloaded .debs stay here: a rebuild downloads nothing
    mkdir -p "$DEBS"
    rootfs=$(mktemp -d /tmp/swarmpool-julia.XXXXXX)
    trap "rm -rf '$rootfs'" EXIT
    echo "pluto-demo: debootstrap bullseye minbase (+$packages) from $MIRROR (cache $DEBS) for $image"
    debootstrap --variant=minbase --cache-dir="$DEBS" --include="$packages" \
        bullseye "$rootfs" "$MIRROR" | sed -u 's/^/pluto-demo:   /'
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/doc/* \
        "$rootfs"/usr/share/man/* "$rootfs"/usr/share/julia/test
    tar -C "$rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["julia"]' - "$image" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    echo "pluto-demo: built $image in $(( $(date +%s) - start ))s ($(image_size "$image"))"
}
if ((FULL)) || ! docker image inspect "$JULIA_BASE" >/dev/null 2>&1; then
    bullseye_image "$JULIA_BASE" julia,curl,ca-certificates
fi
if ((FULL)) || ! docker image inspect "$JULIA_BUILDER" >/dev/null 2>&1; then
    bullseye_image "$JULIA_BUILDER" julia,curl,ca-certificates,binutils  # curl: Pkg wants a download engine
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
cp "$HERE"/Dockerfile "$HERE"/setup.jl "$HERE"/sysimage.jl "$HERE"/start.jl "$HERE"/webapp.jl "$CONTEXT/"

echo "pluto-demo: docker build $IMAGE from $SOURCES ($(ls "$CONTEXT"/sources | wc -l) archives)"
EXTRA=()
((FULL)) && EXTRA=(--no-cache)
[[ -n "$CPU_TARGET" ]] && EXTRA+=(--build-arg "CPU_TARGET=$CPU_TARGET")
LOG="$CONTEXT/build.log"
# the build's own lines (setup:, sysimage:) are shown; the whole log only when it fails
if ! DOCKER_BUILDKIT=0 docker build "${EXTRA[@]}" --build-arg "JULIA_BASE=$JULIA_BASE" \
        --build-arg "JULIA_BUILDER=$JULIA_BUILDER" --build-arg "ICONS=$ICONS" -t "$IMAGE" "$CONTEXT" 2>&1 \
        | tee "$LOG" | { grep --line-buffered -E '^(setup|sysimage|swarmpool):' || true; } | sed -u 's/^/pluto-demo:   /'; then
    tail -n 40 "$LOG" | sed 's/^/pluto-demo: ! /' >&2
    echo "pluto-demo: docker build of $IMAGE failed" >&2
    exit 1
fi
echo "pluto-demo: built $IMAGE in $(( $(date +%s) - start ))s ($(image_size "$IMAGE"))"
