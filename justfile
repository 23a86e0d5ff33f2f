# swarmpool tasks. `just --list` shows them all.

set shell := ["bash", "-euo", "pipefail", "-c"]

# run swarmpool on its embedded default (single-node swarm, embedded nats-server, demo apps)
up *ARGS:
    bash bootstrap.sh up {{ARGS}}

# the fast lane, run many times a session: every real part (nats-server, swarm, nginx, Chromium), all but the slow lanes
test *ARGS:
    bash bootstrap.sh test -m "not cluster and not faults and not bench_smoke and not pluto" {{ARGS}}

# every lane, the fast one and the slow ones: what CI runs (README's `bash bootstrap.sh test`)
test-all *ARGS:
    bash bootstrap.sh test {{ARGS}}

# pure-decision tests only (seconds, no Docker)
test-unit:
    python -m pytest tests/unit -q

# validate a catalogue file
check CATALOGUE="apps/catalogue.toml":
    swarmpool check {{CATALOGUE}}

# offline images: base (debootstrap), echo test app, Voila demo, Pluto demo (from ../shared/pluto)
images:
    apps/base/build.sh
    apps/echo/build.sh
    apps/voila-demo/build.sh
    apps/pluto-demo/build.sh || test $? -eq 3  # exit 3: no Pluto sources here (said in one line)

# the control-plane image swarmpool/control:<version> (NATS, functions, gateway) for `swarmpool deploy`
control-image *ARGS:
    apps/control/build.sh {{ARGS}}

# slow lane: the stack on a real 2-node swarm of two namespaced engines (root; a few minutes)
test-cluster *ARGS:
    python -m pytest -m cluster -q {{ARGS}}

# slow lane: engine restarts, power cuts, kill -9 of nats-server, function hosts and gateways
test-faults *ARGS:
    python -m pytest -m faults -q {{ARGS}}

# slow lane: Pluto.jl notebooks end to end: Chromium through the gateway and nginx (builds swarmpool/pluto-demo if missing)
test-pluto *ARGS:
    python -m pytest -m pluto -q {{ARGS}}

# click -> 303 latency against a warm pool of N echo instances, NATS round trip as the floor
bench-claim N="100" *ARGS:
    python -m bench.bench_claim -n {{N}} {{ARGS}}

# the same, then again through `swarmpool deploy` on this machine's single-node swarm (both tables)
bench-claim-stack N="50" *ARGS:
    python -m bench.bench_claim -n {{N}} --stack {{ARGS}}

# HTTP and WebSocket through direct / gateway / nginx+gateway / configurable-http-proxy
bench-proxy *ARGS:
    python -m bench.bench_proxy {{ARGS}}

# click -> executed notebook visible in Chromium, against opening a running instance directly
bench-notebook *ARGS:
    python -m bench.bench_click_to_notebook {{ARGS}}

# a class clicks at once: N students (Chromium contexts) direct / gateway / nginx+gateway, with and without 10 Mbit/s each
bench-class N="12" *ARGS:
    python -m bench.bench_class --students {{N}} {{ARGS}}

# what a top-up pays for counting the pool across hosts (cluster mutex + mirror catch-up), local lock as baseline
bench-topup-lock *ARGS:
    python -m bench.bench_topup_lock {{ARGS}}

# what a host pays to say "ready" only once the server holds its subscriptions, flush() as baseline
bench-ready *ARGS:
    python -m bench.bench_ready {{ARGS}}

# the Pluto demo warm against a cold start in Chromium: start to ready, click to visible, slider round trips, memory (--smoke: tiny counts; --build: time a full image build)
bench-pluto *ARGS:
    python -m bench.bench_pluto {{ARGS}}

# hundreds of instances: control-plane memory, reconcile passes and 100 clicks/s at N real (busybox) instances and R records, against issue 17's goals
bench-scale N="500" RECORDS="1000" *ARGS:
    python -m bench.bench_scale -n {{N}} --records {{RECORDS}} {{ARGS}}

# a lecture on `up`: N students (HTTP + WebSocket clients) arrive over a window against a smaller pool, wait in line, are served (--smoke: tiny counts)
bench-lecture N="200" POOL="60" *ARGS:
    python -m bench.bench_lecture --students {{N}} --pool {{POOL}} {{ARGS}}

# the same lecture on `swarmpool deploy` on a 2-node swarm of namespaced engines (tests/cluster.py; root; --smoke: tiny counts)
bench-lecture-cluster N="200" POOL="60" *ARGS:
    python -m bench.bench_lecture --cluster --students {{N}} --pool {{POOL}} {{ARGS}}

# warming (and refilling) a pool of N echo instances against the engine's own rate for N such services (--smoke: tiny N)
bench-warm N="60" *ARGS:
    python -m bench.bench_warm -n {{N}} {{ARGS}}

# slow lane: every bench above in its smoke mode (tiny counts; the stack bench too): they still run (CI runs it)
bench-smoke *ARGS:
    python -m pytest -m bench_smoke -q {{ARGS}}

# render the production nginx config: just nginx example.org /etc/ssl/x.pem /etc/ssl/x.key
nginx SERVER_NAME CERT KEY GATEWAY="127.0.0.1:8000" OUT="nginx/out":
    python nginx/render.py --server-name {{SERVER_NAME}} --cert {{CERT}} --key {{KEY}} --gateway {{GATEWAY}} --out {{OUT}}

# type-check the package as it is installed (swarmpool.bus is bus/, ...): mypy has no package-dir
# mapping, so it reads a throwaway tree of links laid out like the wheel
mypy:
    #!/usr/bin/env bash
    set -euo pipefail
    root=$(pwd); tree=$(mktemp -d); trap 'rm -rf "$tree"' EXIT
    mkdir "$tree/swarmpool" && ln -s "$root"/swarmpool/*.py "$root"/swarmpool/*.toml "$tree/swarmpool/" 2>/dev/null || true
    for d in bus swarm functions gateway; do ln -s "$root/$d" "$tree/swarmpool/$d"; done
    cd "$tree" && python -m mypy --config-file "$root/pyproject.toml" -p swarmpool
