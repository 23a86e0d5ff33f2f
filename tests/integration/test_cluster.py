"""`swarmpool deploy` on a real 2-node swarm (two namespaced engines, tests/cluster.py): the stack comes up,
clicks through the gateway get distinct live instances on both nodes, `undeploy` leaves nothing behind."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from swarmpool.deploy import control_image
from tests.cluster import Cluster, two_node_swarm

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]
STACK = "spcl"
PORT = 18431
POOL = 4
ECHO = "swarmpool/echo:latest"
CATALOGUE = f"""
[settings]
reconcile_interval = "2s"
start_budget = 4
refill_delay = "60s"

[apps.echo]
image = "{ECHO}"
port = 8888
[apps.echo.probe]
path = "healthz"
timeout = "60s"
[apps.echo.pool]
size = {POOL}
max = 10
[apps.echo.limits]
memory = "128m"
"""
STACK_TIMEOUT = 240.0


def _build(script: str, *args: str) -> None:
    result = subprocess.run([str(ROOT / script), *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr


def _swarmpool(cluster: Cluster, *args: str, timeout: float = STACK_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "swarmpool.cli", *args], capture_output=True, text=True,
                          env=cluster.manager.env, timeout=timeout)


def _wait(condition: object, timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"not within {timeout:.0f} s: {what}")


def _get(cluster: Cluster, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(cluster.manager.address, PORT, timeout=10)
    try:
        conn.request("GET", path, headers={"Accept": "text/html", "User-Agent": "Mozilla/5.0 (cluster test)"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    _build("apps/echo/build.sh")
    _build("apps/control/build.sh", "--force")  # the image runs this checkout
    with two_node_swarm([control_image(), ECHO], [ECHO]) as made:
        yield made


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("deploy")
    (home / "catalogue.toml").write_text(CATALOGUE)
    result = _swarmpool(cluster, "deploy", "--catalogue", str(home / "catalogue.toml"), "--stack", STACK,
                        "--port", str(PORT), "--state-dir", str(home / "state"), "--timeout", "180")
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"http://{cluster.manager.address}:{PORT}/" in result.stdout
        yield cluster
    finally:
        _swarmpool(cluster, "undeploy", "--stack", STACK)


def test_control_image_runs_swarmpool_and_nats_server() -> None:
    _build("apps/control/build.sh")
    help_text = subprocess.run(["docker", "run", "--rm", control_image(), "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0 and "deploy" in help_text.stdout
    version = subprocess.run(["docker", "run", "--rm", "--entrypoint", "nats-server", control_image(), "--version"],
                             capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("nats-server: v2.")


def test_function_hosts_see_the_test_swarms_nodes(deployed: Cluster) -> None:
    client = deployed.manager.client()
    try:
        hosts = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_functions"})
        assert len(hosts) == 2
        for host in hosts:
            code, out = host.exec_run(["python3", "-c", "import docker; print(sorted(n.attrs['Description']"
                                       "['Hostname'] for n in docker.from_env().nodes.list()))"])
            assert code == 0, out
            assert json.loads(out.decode().replace("'", '"')) == ["spc-m", "spc-w"]
    finally:
        client.close()


def _ready_instances(client: docker.DockerClient) -> dict[str, str]:
    """Instance id -> node name of every running instance task of the stack."""
    nodes = {n.id: n.attrs["Description"]["Hostname"] for n in client.nodes.list()}
    found = {}
    for service in client.services.list(filters={"label": f"swarmpool.owner={STACK}"}):
        for task in service.tasks(filters={"desired-state": "running"}):
            if task["Status"]["State"] == "running":
                found[service.attrs["Spec"]["Labels"]["swarmpool.id"]] = nodes.get(task["NodeID"], "?")
    return found


def test_clicks_get_distinct_live_instances_on_both_nodes(deployed: Cluster) -> None:
    client = deployed.manager.client()
    try:
        _wait(lambda: len(_ready_instances(client)) >= POOL, 120, f"{POOL} instances running")
        placed = _ready_instances(client)
        claimed: list[str] = []
        deadline = time.monotonic() + 90
        while len(claimed) < POOL and time.monotonic() < deadline:
            status, headers, _ = _get(deployed, "/launch/echo")
            if status == 303:
                claimed.append(headers["Location"].split("/")[2])
            else:
                time.sleep(0.5)  # not warm yet: the waiting room
        assert len(claimed) == POOL and len(set(claimed)) == POOL
        for instance in claimed:  # live, and the instance that answers is the one handed out
            status, _, body = _get(deployed, f"/i/{instance}/")
            assert status == 200, body[:200]
            assert json.loads(body)["id"] == instance
        nodes = {placed.get(i) for i in claimed}
        assert "spc-w" in nodes, f"no claimed instance on the worker: {nodes}"
    finally:
        client.close()


def test_undeploy_leaves_nothing_behind(deployed: Cluster) -> None:
    result = _swarmpool(deployed, "undeploy", "--stack", STACK)
    assert result.returncode == 0, result.stdout + result.stderr
    client = deployed.manager.client()
    try:
        stack = {"label": f"com.docker.stack.namespace={STACK}"}
        assert client.services.list(filters=stack) == []
        assert client.services.list(filters={"label": f"swarmpool.owner={STACK}"}) == []
        assert client.secrets.list(filters=stack) == [] and client.configs.list(filters=stack) == []
        assert [n.name for n in client.networks.list() if n.name.startswith(f"{STACK}_")] == []
    finally:
        client.close()
