#!/bin/sh
# Default command of the image: serve app.ipynb under $SWARMPOOL_PREFIX with one preheated kernel.
# swarmpool's catalogue passes the same flags itself (with {prefix}); this is for `docker run`.
exec voila app.ipynb \
    --port=8866 --no-browser --Voila.ip=0.0.0.0 \
    --Voila.base_url="${SWARMPOOL_PREFIX:-/}" \
    --Voila.tornado_settings=allow_origin=* \
    --preheat_kernel=True --pool_size=1 \
    "$@"
