# Steps shared by the offline image builds; sourced by apps/base/build.sh and apps/<app>/build.sh.
# Every line they print starts with the name of the image being built ("echo: ...").

SWARMPOOL_BASE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# skip_if_built NAME IMAGE [ARGS...]: end the calling script when IMAGE exists, unless ARGS start with --force.
# With $SWARMPOOL_INPUTS set (see inputs_digest), the image must also have been built from those inputs (its
# label swarmpool.inputs): one built from others (a changed requirement, notebook or Dockerfile) is rebuilt,
# so a machine that already holds the image never keeps running the old one.
skip_if_built() {
    local name=$1 image=$2 built
    shift 2
    if [[ "${1:-}" == "--force" ]]; then
        return 0
    fi
    built=$(docker image inspect -f '{{ index .Config.Labels "swarmpool.inputs" }}' "$image" 2>/dev/null) || return 0
    if [[ -z "${SWARMPOOL_INPUTS:-}" ]]; then
        echo "$name: $image exists, skipping (use --force to rebuild)"
        exit 0
    fi
    if [[ "$built" == "$SWARMPOOL_INPUTS" ]]; then
        echo "$name: $image exists and is current, skipping (use --force to rebuild)"
        exit 0
    fi
    echo "$name: $image was built from other inputs (${built:-unlabelled}, now $SWARMPOOL_INPUTS): rebuilding"
}

# inputs_digest DIR FILE...: one short digest of the named files of DIR, the inputs an image is built from.
inputs_digest() {
    local dir=$1
    shift
    (cd "$dir" && sha256sum "$@" | sha256sum | cut -c1-16)
}

# debian_mirror: the first deb.debian.org-style URI of the host's apt sources, else the public default.
debian_mirror() {
    local uri=""
    if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
        uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources)
    fi
    if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# image_size IMAGE: its size in MiB, for the last line of a build.
image_size() {
    docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MiB", $1/1048576}'
}

# build_app NAME IMAGE CONTEXT REQUIREMENT...: the base image if missing, the wheels (reused while the
# requirements are unchanged; see pip-offline.sh), then an offline `docker build` of CONTEXT, labelled
# swarmpool.inputs=$SWARMPOOL_INPUTS when that is set (see skip_if_built).
build_app() {
    local name=$1 image=$2 context=$3 start
    shift 3
    start=$(date +%s)
    "$SWARMPOOL_BASE_DIR/build.sh"
    "$SWARMPOOL_BASE_DIR/pip-offline.sh" "$context" "$@"
    echo "$name: docker build $image"
    DOCKER_BUILDKIT=0 docker build --quiet ${SWARMPOOL_INPUTS:+--label "swarmpool.inputs=$SWARMPOOL_INPUTS"} \
        -t "$image" "$context" >/dev/null
    echo "$name: built $image in $(( $(date +%s) - start ))s ($(image_size "$image"))"
}
