#!/usr/bin/env bash
# Download binary wheels for bookworm's python3 (3.11) into <context-dir>/wheels, for an offline `docker build`;
# nothing is downloaded while wheels/requirements.txt already matches the requirements.
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

# What the image should install; -r files are copied in so the build context is self-contained.
WANTED=$(mktemp)
trap 'rm -f "$WANTED"' EXIT
args=()
while [[ $# -gt 0 ]]; do
    if [[ "$1" == "-r" ]]; then
        cat "$2" >> "$WANTED"; args+=(-r "$2"); shift 2
    else
        echo "$1" >> "$WANTED"; args+=("$1"); shift
    fi
done

# Downloading is the slow part: reuse the wheels while the requirements are unchanged (delete wheels/ to refetch).
if cmp -s "$WANTED" "$WHEELS/requirements.txt" && compgen -G "$WHEELS/*.whl" >/dev/null; then
    echo "wheels: up to date in $WHEELS"
    exit 0
fi
rm -f "$WHEELS"/*.whl "$WHEELS/requirements.txt"

# bookworm: CPython 3.11.2, glibc 2.36. pip expands manylinux_2_36 to every older manylinux tag.
echo "wheels: downloading $(grep -cv '^\s*\(#\|$\)' "$WANTED") requirement(s) into $WHEELS"
"$PYTHON" -m pip download --quiet --dest "$WHEELS" \
    --only-binary=:all: --python-version 3.11.2 --implementation cp --abi cp311 --abi abi3 --abi none \
    --platform "manylinux_2_36_$ARCH" --platform "manylinux2014_$ARCH" --platform any \
    "${args[@]}"
# Written last, so an interrupted download is retried rather than reused.
cp "$WANTED" "$WHEELS/requirements.txt"
echo "wheels: $(ls "$WHEELS"/*.whl | wc -l) wheel(s), $(du -sh "$WHEELS" | cut -f1)"
