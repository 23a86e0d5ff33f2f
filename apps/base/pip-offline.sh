#!/usr/bin/env bash
# Download binary wheels for bookworm's python3 (3.11) into <context-dir>/wheels, for an offline `docker build`.
# Usage: apps/base/pip-offline.sh <context-dir> <requirement or -r file>...
# The image then installs with:
#   python3 -m pip install --no-index --find-links /wheels --break-system-packages -r /wheels/requirements.txt
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 <context-dir> <requirement or -r file>..." >&2
    exit 2
fi
CONTEXT=$1; shift
WHEELS="$CONTEXT/wheels"
ARCH=$(uname -m)
PYTHON=${PYTHON:-python3}
mkdir -p "$WHEELS"

# Record what the image should install; -r files are copied in so the build context is self-contained.
: > "$WHEELS/requirements.txt"
args=()
while [[ $# -gt 0 ]]; do
    if [[ "$1" == "-r" ]]; then
        cat "$2" >> "$WHEELS/requirements.txt"; args+=(-r "$2"); shift 2
    else
        echo "$1" >> "$WHEELS/requirements.txt"; args+=("$1"); shift
    fi
done

# bookworm: CPython 3.11.2, glibc 2.36. pip expands manylinux_2_36 to every older manylinux tag.
echo "wheels: downloading $(grep -cv '^\s*\(#\|$\)' "$WHEELS/requirements.txt") requirement(s) into $WHEELS"
"$PYTHON" -m pip download --quiet --dest "$WHEELS" \
    --only-binary=:all: --python-version 3.11.2 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform "manylinux_2_36_$ARCH" --platform "manylinux2014_$ARCH" --platform any \
    "${args[@]}"
echo "wheels: $(ls "$WHEELS"/*.whl | wc -l) wheel(s), $(du -sh "$WHEELS" | cut -f1)"
