"""Instance ports are for the gateway alone: not from another machine (a test host in a network
namespace of its own, on a veth pair), not from a neighbour instance; the packet filter comes and goes.

Traffic here goes only from the namespace this test creates to the host end of its own veth pair,
or from inside instance containers.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import shlex
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import docker
import pytest
import pytest_asyncio

from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import InstanceSpec, TaskStatus
from swarmpool.swarm.names import instance_network_name
from swarmpool.swarm.firewall import Firewall, FirewallUnavailable
from swarmpool.swarm.tasks import ENDED_TASK_STATES, MISSING
from tests.docker_fixtures import new_instance_id, wait_for

pytestmark = pytest.mark.docker

CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])).close()
    print("connected")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("refused" if e.errno == 111 else f"error {e.errno}")
"""


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@dataclass
class LanHost:
    """Another machine on the LAN: a network namespace joined to the host by a veth pair."""

    netns: str
    host_address: str  # the host's end of the veth pair

    def connect(self, port: int, timeout: float = 1.5) -> str:
        return subprocess.run(["ip", "netns", "exec", self.netns, "python3", "-c", CONNECT, self.host_address,
                               str(port), str(timeout)], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def test_host() -> Iterator[LanHost]:
    tag = secrets.token_hex(3)
    netns, host_end, ns_end = f"sptest-{tag}", f"vsp{tag}h", f"vsp{tag}n"
    subnet = 10 + secrets.randbelow(200)
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", netns)
        sh("ip", "addr", "add", f"10.213.{subnet}.1/30", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"10.213.{subnet}.2/30", "dev", ns_end)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", ns_end, "up")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        yield LanHost(netns=netns, host_address=f"10.213.{subnet}.1")
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)  # takes its peer along
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


@pytest_asyncio.fixture(loop_scope="session")
async def firewall(swarm: Swarm) -> AsyncIterator[Firewall]:
    wall = Firewall(swarm.namespace)
    await asyncio.to_thread(wall.install)
    try:
        yield wall
    finally:
        await asyncio.to_thread(wall.remove)
    assert wall.installed() == [] and wall.installed("ip6tables") == []


async def running_echo(swarm: Swarm, image: str) -> tuple[InstanceSpec, TaskStatus]:
    instance_id = new_instance_id()
    spec = InstanceSpec(app="echo", id=instance_id, image=image, port=8888,
                        env={"SWARMPOOL_PREFIX": f"/i/{instance_id}/"})
    service_id = await swarm.create(spec)

    async def listening() -> TaskStatus | None:
        status = await swarm.status(service_id)
        assert status.state not in ENDED_TASK_STATES | {MISSING}, status
        if status.state != "running" or not status.endpoint:
            return None
        # the gateway's path: 127.0.0.1 on the host; an HTTP answer, not just a connect (docker-proxy
        # accepts connections before the app inside listens)
        return status if await swarm.probe_http(status.endpoint, f"/i/{instance_id}/healthz") else None

    return spec, await wait_for(listening, timeout=60, what="echo listening on its published port")


async def test_another_machine_reaches_the_gateway_but_not_an_instance(
        swarm: Swarm, echo_image: str, firewall: Firewall, test_host: LanHost) -> None:
    _, status = await running_echo(swarm, echo_image)
    gateway = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", 0)  # stands in for the gateway
    try:
        gateway_port = gateway.sockets[0].getsockname()[1]
        assert await asyncio.to_thread(test_host.connect, gateway_port) == "connected"
        instance_port = int(status.endpoint.rsplit(":", 1)[1])
        assert await asyncio.to_thread(test_host.connect, instance_port) in ("refused", "timeout")
    finally:
        gateway.close()
        await gateway.wait_closed()


async def test_a_neighbour_instance_cannot_reach_another(
        swarm: Swarm, echo_image: str, firewall: Firewall, docker_client: docker.DockerClient) -> None:
    (_, mine), (_, neighbour) = await asyncio.gather(running_echo(swarm, echo_image),
                                                     running_echo(swarm, echo_image))
    inside = docker_client.containers.get(mine.container_id)
    networks = docker_client.api.inspect_container(neighbour.container_id)["NetworkSettings"]["Networks"]
    # the namespace's instance bridge, of whichever generation the adapter uses now
    settings = next(v for k, v in networks.items() if k.startswith(instance_network_name(swarm.namespace)))
    neighbour_port = neighbour.endpoint.rsplit(":", 1)[1]

    def connect(host: str, port: str | int) -> str:
        return inside.exec_run(["python3", "-c", CONNECT, host, str(port), "1.5"]).output.decode().strip()

    assert connect("127.0.0.1", 8888) == "connected"  # the probe itself works: its own port
    assert connect(settings["Gateway"], neighbour_port) == "refused"  # the host's bridge address: rejected
    assert connect(settings["IPAddress"], 8888) in ("timeout", "refused")  # directly: no inter-instance traffic


async def test_the_filter_is_installed_once_and_removed_by_tag(swarm: Swarm) -> None:
    wall = Firewall(swarm.namespace)
    try:
        await asyncio.to_thread(wall.install)
        first = wall.installed() + wall.installed("ip6tables")
        await asyncio.to_thread(wall.install)  # idempotent: the same rules, not twice
        assert wall.installed() + wall.installed("ip6tables") == first
        # an install interrupted while building its new chains left one, jumped to: the next one clears it
        leftover = "SWARMPNEW" + wall.input_chain[len("SWARMPOOL"):]
        subprocess.run(["iptables", "-w", "-N", leftover], check=True)
        subprocess.run(["iptables", "-w", "-I", "INPUT", "1", "-m", "comment", "--comment", wall.tag, "-j", leftover],
                       check=True)
        await asyncio.to_thread(wall.install)
        assert wall.installed() + wall.installed("ip6tables") == first
        assert subprocess.run(["iptables", "-w", "-n", "-L", leftover], capture_output=True).returncode != 0
        assert any("DOCKER-USER" in line for line in first) and any("-A INPUT" in line for line in first)
        assert any("! -i lo" in line for line in wall.installed("ip6tables"))
        assert wall.verified()  # what `up` checks when it may not install them itself
        rule = next(line for line in wall.installed() if line.startswith(f"-A {wall.chain} "))
        subprocess.run(["iptables", "-w", "-D", *shlex.split(rule[3:])], check=True)
        assert not wall.verified()  # one rule missing
    finally:
        await asyncio.to_thread(wall.remove)
    assert wall.installed() == [] and wall.installed("ip6tables") == []
    assert subprocess.run(["iptables", "-w", "-n", "-L", wall.chain], capture_output=True).returncode != 0


def test_without_iptables_the_filter_says_what_to_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    wall = Firewall("nofw")
    with pytest.raises(FirewallUnavailable, match="iptables is not installed"):
        wall.install()
    commands = wall.commands()
    assert any(c.startswith("iptables -w -I DOCKER-USER") for c in commands)
    assert any(c.startswith("ip6tables -w -I INPUT") for c in commands)
    assert os.environ["PATH"] == "/nonexistent"
