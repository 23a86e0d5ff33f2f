"""`swarmpool deploy` on a real 2-node swarm (two namespaced engines, tests/cluster.py): the stack comes up,
clicks through the gateway get distinct live instances on both nodes, `undeploy` leaves nothing behind."""

from __future__ import annotations

import http.client
import json
import shlex
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator

import docker
import pytest

from swarmpool.deploy import control_image
from swarmpool.swarm.model import GUARD_PORT
from tests.cluster import SUBNET, Cluster, build_image, deployed_stack, swarmpool_cli, two_node_swarm
from tests.inside import LOOK_AROUND, ids_in, shell_command
from tests.integration.test_isolation import CONNECT

pytestmark = [pytest.mark.docker, pytest.mark.cluster]

STACK = "spcl"
PORT = 18431
POOL = 4
ECHO = "swarmpool/echo:latest"
CATALOGUE = f"""
[settings]
reconcile_interval = "2s"
start_budget = 4
refill_delay = "60s"
egress_dns = ["{SUBNET}.1"]  # a DNS server of the test on this host's end of the swarm's bridge (if reachable)

[apps.echo]
image = "{ECHO}"
port = 8888
env = {{ ECHO_SHELL = "1" }}  # a shell behind POST <prefix>run: plays a student's notebook cell
[apps.echo.probe]
path = "healthz"
timeout = "60s"
[apps.echo.pool]
size = {POOL}
max = 16
[apps.echo.limits]
memory = "128m"
"""


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
    build_image("apps/echo/build.sh")
    build_image("apps/control/build.sh")  # the image runs this checkout (rebuilt when its digest differs)
    with two_node_swarm([control_image(), ECHO], [control_image(), ECHO]) as made:  # guards run on every node
        yield made


@pytest.fixture(scope="module")
def deployed(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("deploy")
    (home / "catalogue.toml").write_text(CATALOGUE)
    with deployed_stack(cluster, home / "catalogue.toml", STACK, PORT, home / "state"):
        yield cluster


def test_control_image_runs_swarmpool_and_nats_server() -> None:
    build_image("apps/control/build.sh")
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
            if status == 303 and "/ticket/" not in headers["Location"]:  # not a place in line: an instance
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


def _overlay_addresses(client: docker.DockerClient) -> list[str]:
    """The addresses of every running task on the instances' overlay, on both nodes (what a scan finds)."""
    network = client.networks.get(f"{STACK}_instances").id
    found = set()
    for task in client.api.tasks(filters={"desired-state": "running"}):
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["ID"] == network:
                found.update(a.split("/")[0] for a in attachment.get("Addresses") or [])
    return sorted(found)


def test_nothing_inside_an_instance_on_the_overlay_names_another_instances_id(deployed: Cluster) -> None:
    client = deployed.manager.client()
    try:
        _wait(lambda: len(_ready_instances(client)) >= POOL, 120, f"{POOL} instances running")
        instance = _claim(deployed)
        addresses = _overlay_addresses(client)
        everyone = {key.split(".", 1)[1] for key in _bus(deployed)["records"]}  # type: ignore[union-attr]
        everyone |= set(_ready_instances(client))
    finally:
        client.close()
    conn = http.client.HTTPConnection(deployed.manager.address, PORT, timeout=30)
    try:  # through the gateway, as the student's browser runs a cell
        conn.request("POST", f"/i/{instance}/run", body=shell_command(LOOK_AROUND, *addresses).encode())
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body[:300]
    result = json.loads(body)
    assert result["rc"] == 0, result
    seen = json.loads(result["stdout"])
    names = [n for found in seen["reverse"].values() if isinstance(found, list) for n in found]
    assert len(names) >= POOL, seen["reverse"]  # the overlay's DNS answers for neighbours on both nodes
    assert any(isinstance(v, list) and v for k, v in seen["forward"].items() if k.startswith("tasks.")), \
        seen["forward"]
    leaked = ids_in(seen, everyone - {instance})
    assert not leaked, f"ids of other instances visible inside: {leaked} in {names}"


# -- faults on the deployed stack: one gateway, one NATS server, one function host, the worker's link ----------

_RECORDS = """
import asyncio, json, sys
import nats.js.errors
from swarmpool.bus.roles import Access
from swarmpool.bus.subjects import Subjects
from swarmpool.launcher import _connect

async def main():
    s = Subjects({stack!r})
    access = Access.load("/run/secrets/functions.json")
    nc = await _connect(access.url, "functions", {stack!r}, access)
    js = nc.jetstream()
    kv = await js.key_value(s.instances_bucket)
    records = {{}}
    keys = sys.argv[1:]  # the keys asked for, each read itself: a listing (an ordered watch) can miss a key
    if not keys:         # that is rewritten while it is listed, and a record is rewritten at every heartbeat;
        pre = "$KV." + s.instances_bucket + "."  # so every key is the stream's subjects, one snapshot
        info = await js.stream_info("KV_" + s.instances_bucket, subjects_filter=pre + ">")
        keys = sorted(subject[len(pre):] for subject in info.state.subjects or {{}})
    for key in keys:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # absent (deleted or never written): left out
            continue
        value = json.loads(entry.value)
        records[key] = {{"state": value["state"], "node": value.get("node", ""), "used": value.get("used", False)}}
    replicas = [(await js.stream_info(name)).config.num_replicas
                for name in ("KV_" + s.instances_bucket, "KV_" + s.config_bucket, s.events_stream)]
    print(json.dumps({{"records": records, "replicas": replicas}}))
    await nc.close()

asyncio.run(main())
""".format(stack=STACK)


def _bus(cluster: Cluster, keys: Iterable[str] = ()) -> dict[str, object]:
    """The instance records (key -> state, node) and the replica counts of the stack's streams, read on the bus
    from inside a function host (NATS is reachable only on the stack's overlay). With `keys`, those records
    only, each read by its key (an absent one is left out); without, every key the bucket lists."""
    client = cluster.manager.client()
    failures = []
    try:
        for attempt in range(3):  # a read may fail while the cluster is busy: never taken for an empty bucket
            for host in client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_functions"}):
                code, out = host.exec_run(["python3", "-c", _RECORDS, *keys])
                if code == 0:
                    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]
                failures.append(out.decode(errors="replace").strip().splitlines()[-1:])
            time.sleep(1)
        raise AssertionError(f"no function host could read the bus: {failures}")
    finally:
        client.close()


def _bus_or_none(cluster: Cluster, keys: Iterable[str] = ()) -> dict[str, object] | None:
    try:
        return _bus(cluster, keys)
    except (AssertionError, ValueError, docker.errors.APIError):
        return None


def _claim(cluster: Cluster, timeout: float = 60) -> str:
    """One click that gets a live instance (waiting rooms retried); its id, checked to answer as itself."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, headers, _ = _get(cluster, "/launch/echo")
        except OSError:
            status, headers = 0, {}
        if status == 303 and "/ticket/" not in headers["Location"]:  # a place in line needs cookies: retried
            instance = headers["Location"].split("/")[2]
            assert _answers(cluster, instance), f"a click was handed an instance that does not answer: {status}"
            return instance
        time.sleep(0.5)
    raise AssertionError(f"no click answered with an instance within {timeout:.0f} s")


def _answers(cluster: Cluster, instance: str) -> bool:
    status, _, body = _get(cluster, f"/i/{instance}/")
    return status == 200 and json.loads(body)["id"] == instance


def _kill_one(cluster: Cluster, service: str) -> str:
    """Kill one running container of a stack service on the manager; its id."""
    client = cluster.manager.client()
    try:
        running = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_{service}"})
        assert running, f"no {service} container runs"
        running[0].kill()
        return running[0].id  # type: ignore[no-any-return]
    finally:
        client.close()


def _restarted(cluster: Cluster, service: str, killed: str, count: int) -> bool:
    """Whether the swarm runs `count` containers of `service` again, none of them the killed one."""
    client = cluster.manager.client()
    try:
        running = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_{service}"})
        return len(running) >= count and killed not in {c.id for c in running}
    finally:
        client.close()


def test_streams_are_replicated_on_the_three_nats_servers(deployed: Cluster) -> None:
    assert _bus(deployed)["replicas"] == [3, 3, 3]


def test_a_killed_gateway_comes_back_with_its_sessions(deployed: Cluster) -> None:
    session = _claim(deployed)
    killed = _kill_one(deployed, "gateway")
    _wait(lambda: _restarted(deployed, "gateway", killed, 1), 60, "the swarm restarts the gateway")

    def healthy() -> bool:
        try:
            return _get(deployed, "/healthz")[0] == 200
        except OSError:
            return False

    _wait(healthy, 60, "the restarted gateway answers")
    assert _answers(deployed, session), "the session did not survive the gateway's restart"
    _claim(deployed)


def test_killing_one_nats_server_loses_no_record_and_no_click(deployed: Cluster) -> None:
    session = _claim(deployed)
    before = _bus(deployed)["records"]
    assert before[f"echo.{session}"]["state"] == "claimed"  # type: ignore[index]
    killed = _kill_one(deployed, "nats-2")
    claimed = [_claim(deployed) for _ in range(2)]  # the other two servers keep the quorum
    assert _answers(deployed, session)
    held = {k for k, v in before.items() if v["state"] == "claimed"}  # type: ignore[union-attr]
    after = _wait(lambda: _bus_or_none(deployed, held | {f"echo.{i}" for i in claimed}), 60, "the bus answers")
    records = after["records"]  # type: ignore[index]
    assert records[f"echo.{session}"]["state"] == "claimed"
    for instance in claimed:
        assert records[f"echo.{instance}"]["state"] == "claimed"
    lost = held - set(records)
    assert not lost, f"claimed records lost with a NATS server: {len(lost)}"
    _wait(lambda: _restarted(deployed, "nats-2", killed, 1), 60, "the swarm restarts the NATS server")


def test_killing_one_function_host_loses_no_record_and_no_click(deployed: Cluster) -> None:
    session = _claim(deployed)
    # the session's first heartbeat applied: one in flight to the killed host would be lost, and an
    # untouched session then ends by unused_grace (docs/operating.md, Known limits)
    _wait(lambda: (_bus_or_none(deployed, [f"echo.{session}"]) or {}).get("records", {}).get(f"echo.{session}", {}).get("used"),  # type: ignore[attr-defined]
          60, "the session's traffic recorded")
    before = _bus(deployed)["records"]
    killed = _kill_one(deployed, "functions")
    claimed = [_claim(deployed) for _ in range(2)]  # the other host answers claims (queue groups)
    assert _answers(deployed, session)
    held = {k for k, v in before.items() if v["state"] == "claimed"}  # type: ignore[union-attr]
    records = _bus(deployed, held | {f"echo.{i}" for i in [session, *claimed]})["records"]
    for instance in [session, *claimed]:
        assert records[f"echo.{instance}"]["state"] == "claimed"  # type: ignore[index]
    lost = held - set(records)  # type: ignore[arg-type]
    assert not lost, f"claimed records lost with a function host: {len(lost)}"
    _wait(lambda: _restarted(deployed, "functions", killed, 2), 60, "the swarm restarts the function host")


def test_losing_the_worker_ends_its_sessions_and_refills_on_the_manager(deployed: Cluster) -> None:
    client = deployed.manager.client()
    try:
        worker_node = deployed.node_id(deployed.worker)
        on_worker: list[str] = []
        on_manager: list[str] = []
        for _ in range(12):  # sessions on both nodes (the swarm spreads instances)
            instance = _claim(deployed)
            (on_worker if _ready_instances(client).get(instance) == "spc-w" else on_manager).append(instance)
            if on_worker and on_manager:
                break
        assert on_worker and on_manager, f"no sessions on both nodes: {len(on_worker)}, {len(on_manager)}"
        def worker_session_placed() -> dict[str, object] | None:
            bus = _bus_or_none(deployed, [f"echo.{on_worker[0]}"])
            record = bus["records"].get(f"echo.{on_worker[0]}") if bus else None  # type: ignore[attr-defined]
            return bus if record and record["node"] else None

        records = _wait(worker_session_placed, 30, "the worker's session records its node")
        assert records["records"][f"echo.{on_worker[0]}"]["node"] == worker_node  # type: ignore[index]
        deployed.cut(deployed.worker)
        try:
            _wait(lambda: deployed.node_state(deployed.worker) == "down", 60, "the manager marks the worker down")

            def ended(instance: str) -> bool:
                try:
                    status, _, body = _get(deployed, f"/i/{instance}/")
                except OSError:  # the gateway still tried the lost node (before the reconcile)
                    return False
                return status == 404 and b"session has ended" in body

            _wait(lambda: ended(on_worker[0]), 30, "the worker's session ends with the session-ended page")
            assert _answers(deployed, on_manager[0]), "a session on the manager did not survive"
            bus = _bus(deployed)["records"]
            assert all(v["node"] != worker_node for v in bus.values()  # type: ignore[union-attr]
                       if v["state"] in ("ready", "claimed")), "records on the lost node are still live"
            for _ in range(POOL + 2):  # the pool refills on the manager; every click answers as itself
                instance = _claim(deployed, timeout=90)
                assert _ready_instances(client).get(instance) == "spc-m"
        finally:
            deployed.restore(deployed.worker)
        _wait(lambda: deployed.node_state(deployed.worker) == "ready", 90, "the worker is back")
    finally:
        client.close()


RESOLVE = """
import socket, sys
try:
    print(socket.gethostbyname(sys.argv[1]))
except OSError as e:
    print(f"failed {e}")
"""


def _run_in(cluster: Cluster, instance: str, *argv: str) -> str:
    """Run a command in an instance through the gateway (the echo app's shell, as a student's cell)."""
    conn = http.client.HTTPConnection(cluster.manager.address, PORT, timeout=60)
    try:
        conn.request("POST", f"/i/{instance}/run", body=shlex.join(argv).encode(),
                     headers={"User-Agent": "Mozilla/5.0 (cluster test)"})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    assert response.status == 200, body[:300]
    result = json.loads(body)
    assert result["rc"] == 0, result
    return str(result["stdout"]).strip()


def test_an_instance_reaches_nothing_on_either_node(deployed: Cluster) -> None:
    client = deployed.manager.client()
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # would answer: the test only counts queries
    dns.bind((f"{SUBNET}.1", 53))
    dns.setblocking(False)
    lan = socket.create_server((f"{SUBNET}.1", 0))  # a LAN service: this host's end of the swarm's bridge
    try:
        by_node: dict[str, str] = {}
        for _ in range(12):  # a session on each node
            instance = _claim(deployed)
            by_node.setdefault(_ready_instances(client).get(instance, "?"), instance)
            if {"spc-m", "spc-w"} <= set(by_node):
                break
        assert {"spc-m", "spc-w"} <= set(by_node), by_node
        (gateway,) = client.containers.list(filters={"label": f"com.docker.swarm.service.name={STACK}_gateway"})
        gateway_overlay = gateway.attrs["NetworkSettings"]["Networks"][f"{STACK}_instances"]["IPAddress"]
        targets = {
            "the manager's swarm port": (deployed.manager.address, 2377),
            "the manager's gossip port": (deployed.manager.address, 7946),
            "the worker's gossip port": (deployed.worker.address, 7946),
            "the gateway's published port": (deployed.manager.address, PORT),
            "the gateway's listener on the overlay": (gateway_overlay, 8000),
            "a LAN service": (f"{SUBNET}.1", lan.getsockname()[1]),
        }
        for node in ("spc-m", "spc-w"):
            outcomes = {what: _run_in(deployed, by_node[node], "python3", "-c", CONNECT, host, str(port), "2")
                        for what, (host, port) in targets.items()}
            assert not [what for what, outcome in outcomes.items() if outcome == "connected"], (node, outcomes)
            name = f"cluster-{node}.example"
            assert _run_in(deployed, by_node[node], "python3", "-c", RESOLVE, name).startswith("failed"), node
        try:
            query = dns.recv(512)
        except BlockingIOError:
            query = b""
        assert query == b"", "an instance's DNS query reached the LAN resolver"
    finally:
        dns.close()
        lan.close()
        client.close()


def _instance_addresses(cluster: Cluster) -> dict[str, tuple[str, str]]:
    """Instance id -> (node, overlay address) of every running instance container, on both nodes."""
    found = {}
    for engine in (cluster.manager, cluster.worker):
        client = engine.client()
        try:
            for container in client.containers.list(filters={"label": f"swarmpool.owner={STACK}"}):
                network = container.attrs["NetworkSettings"]["Networks"].get(f"{STACK}_instances") or {}
                if network.get("IPAddress"):
                    found[container.labels["swarmpool.id"]] = (engine.name, network["IPAddress"])
        finally:
            client.close()
    return found


def test_an_instance_reaches_no_neighbour_on_either_node(deployed: Cluster) -> None:
    by_node: dict[str, str] = {}
    for _ in range(12):  # a session on each node
        instance = _claim(deployed)
        by_node.setdefault(_instance_addresses(deployed).get(instance, ("?", ""))[0], instance)
        if {"spc-m", "spc-w"} <= set(by_node):
            break
    assert {"spc-m", "spc-w"} <= set(by_node), by_node
    _wait(lambda: {n for n, _ in _instance_addresses(deployed).values()} >= {"spc-m", "spc-w"}
          and len(_instance_addresses(deployed)) >= 4, 120, "neighbours running on both nodes")
    addresses = _instance_addresses(deployed)
    for node, instance in by_node.items():
        neighbours: dict[str, str] = {}  # one other instance per node, claimed or warm
        for other, (where, address) in addresses.items():
            if other != instance:
                neighbours.setdefault(where, address)
        assert set(neighbours) == {"spc-m", "spc-w"}, (node, addresses)
        outcomes = {(where, port): _run_in(deployed, instance, "python3", "-c", CONNECT, address, str(port), "2")
                    for where, address in neighbours.items() for port in (8888, GUARD_PORT)}
        # refused at once (a reset from the instance's own rules), on the app's port and on the guard's
        assert set(outcomes.values()) == {"refused"}, (node, outcomes)
        assert _run_in(deployed, instance, "python3", "-c", CONNECT, "127.0.0.1", "8888", "2") == "connected"
        assert _answers(deployed, instance), f"{instance} on {node} no longer serves through the gateway"


def test_undeploy_leaves_nothing_behind(deployed: Cluster) -> None:
    result = swarmpool_cli(deployed, "undeploy", "--stack", STACK)
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
