"""A 2-node Docker swarm on this machine for the cluster tests (DESIGN, "Testing a cluster on one machine").

Two network namespaces on one host bridge (10.233.0.0/24, private addresses used only here), an accept
rule for that bridge in DOCKER-USER, a `dockerd` in each (tests/engine.py's Engine, with its own node name
through `unshare --uts`), `swarm init` on the manager and `swarm join` on the worker, and images copied
in with `docker save | docker load`. Everything is removed afterwards, also when a step failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.engine import Engine, _remove_root, _run

BRIDGE = "spc-br"
SUBNET = "10.233.0"
ROOT = Path(__file__).resolve().parents[1]
# each node's own engine for function hosts and guards (the test engines' sockets differ): a template per node
NODE_SOCKET = "/var/lib/swarmpool-test-{{.Node.Hostname}}/docker.sock"


class NamedEngine(Engine):
    """An engine whose processes also see their own host name (the swarm's node name)."""

    def inside(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}", "unshare", "--uts",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.name, *cmd]

    def in_netns(self, *cmd: str) -> list[str]:
        return ["nsenter", f"--net=/var/run/netns/{self.name}", *cmd]


@dataclass
class Cluster:
    manager: NamedEngine
    worker: NamedEngine

    def node_id(self, engine: Engine) -> str:
        return engine.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.decode().strip()

    def cut(self, engine: Engine) -> None:
        """Cut a node's link (as a pulled cable): its host end of the veth goes down."""
        _run("ip", "link", "set", f"vh-{engine.name}"[:15], "down")

    def restore(self, engine: Engine) -> None:
        """Plug a cut node's link back in."""
        _run("ip", "link", "set", f"vh-{engine.name}"[:15], "up")

    def node_state(self, engine: Engine) -> str:
        """The state (ready, down, ...) the manager sees for `engine`'s node."""
        return self.manager.docker("node", "inspect", "--format", "{{.Status.State}}",
                                   engine.name).stdout.decode().strip()  # the node name is the engine's


def _copy_image(image: str, engine: Engine) -> None:
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    engine.docker("load", stdin=save.stdout)
    assert save.wait() == 0, f"docker save {image} failed"


def _namespace(stack: ExitStack, name: str, address: str) -> None:
    host_if, ns_if = f"vh-{name}"[:15], f"vn-{name}"[:15]
    _run("ip", "netns", "add", name)
    stack.callback(_run, "ip", "netns", "delete", name, check=False)
    _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
    stack.callback(_run, "ip", "link", "delete", host_if, check=False)
    _run("ip", "link", "set", ns_if, "netns", name)
    _run("ip", "link", "set", host_if, "master", BRIDGE)
    _run("ip", "link", "set", host_if, "up")
    _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{address}/24", "dev", ns_if)
    _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
    _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")


@contextmanager
def two_node_swarm(manager_images: list[str], worker_images: list[str]) -> Iterator[Cluster]:
    """A manager and a worker engine joined in one swarm; all of it removed afterwards."""
    with ExitStack() as stack:
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        stack.callback(_run, "ip", "link", "delete", BRIDGE, check=False)
        _run("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        rule = ["DOCKER-USER", "-i", BRIDGE, "-o", BRIDGE, "-j", "ACCEPT"]
        _run("iptables", "-I", *rule)
        stack.callback(_run, "iptables", "-D", *rule, check=False)
        engines = []
        for i, name in enumerate(("spc-m", "spc-w"), start=2):
            address = f"{SUBNET}.{i}"
            _namespace(stack, name, address)
            root = Path(f"/var/lib/swarmpool-test-{name}")
            engine = NamedEngine(name=name, address=address, root=root,
                                 log_path=Path(f"/tmp/swarmpool-test-{name}.log"))
            stack.callback(_remove_root, root)
            stack.callback(engine.stop)
            engine.start()
            engines.append(engine)
        manager, worker = engines
        manager.docker("swarm", "init", "--advertise-addr", manager.address)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.decode().strip()
        worker.docker("swarm", "join", "--token", token, "--advertise-addr", worker.address,
                      f"{manager.address}:2377")
        for image in manager_images:
            _copy_image(image, manager)
        for image in worker_images:
            _copy_image(image, worker)
        yield Cluster(manager=manager, worker=worker)


def build_image(script: str, *args: str) -> None:
    """Run one of the checkout's image scripts (apps/*/build.sh: rebuilds only what changed); fails with its output."""
    result = subprocess.run([str(ROOT / script), *args], capture_output=True, text=True,
                            env={**os.environ, "PYTHON": sys.executable})
    assert result.returncode == 0, result.stdout + result.stderr


def swarmpool_cli(cluster: Cluster, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    """The swarmpool CLI of this checkout against the cluster's manager engine."""
    return subprocess.run([sys.executable, "-m", "swarmpool.cli", *args], capture_output=True, text=True,
                          env=cluster.manager.env, timeout=timeout)


@contextmanager
def deployed_stack(cluster: Cluster, catalogue: Path, stack: str, port: int, state_dir: Path,
                   *extra: str) -> Iterator[str]:
    """`swarmpool deploy` of `catalogue` on the cluster; yields the gateway's URL (the manager's address, which
    the host reaches), and `swarmpool undeploy` afterwards, also when the deploy failed."""
    result = swarmpool_cli(cluster, "deploy", "--catalogue", str(catalogue), "--stack", stack, "--port", str(port),
                           "--state-dir", str(state_dir), "--timeout", "180", "--docker-socket", NODE_SOCKET, *extra)
    url = f"http://{cluster.manager.address}:{port}"
    try:
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{url}/" in result.stdout, result.stdout
        yield url
    finally:
        swarmpool_cli(cluster, "undeploy", "--stack", stack, "--timeout", "300", timeout=400)  # hundreds of instances
