"""What code inside an instance sees names no other instance's id: DNS (forward and reverse) on its network,
its hostname, /etc/hosts, its environment. A student's notebook cell is played by the echo app's shell
(ECHO_SHELL=1, `POST <prefix>run`); every id is taken from the records of a pool of four.

Traffic: the test reaches the instances only at 127.0.0.1 (their published ports); the code inside asks
Docker's embedded DNS (in the container) about addresses and names that exist on its own network.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import docker
import pytest

from swarmpool.swarm import LABEL_OWNER
from tests.stack import Stack, echo_catalogue, running_stack

pytestmark = pytest.mark.docker

POOL = 4

# run inside the instance: everything a student's code learns about its neighbours, given their addresses
LOOK_AROUND = r"""
import json, os, random, socket, struct, sys

def nameserver():
    for line in open("/etc/resolv.conf"):
        if line.startswith("nameserver"):
            return line.split()[1]

def read_name(data, at):
    labels, jumped, end = [], False, at
    while True:
        n = data[at]
        if n >= 0xC0:
            if not jumped:
                end = at + 2
            at, jumped = ((n & 0x3F) << 8) | data[at + 1], True
            continue
        if n == 0:
            return ".".join(labels), (end if jumped else at + 1)
        labels.append(data[at + 1:at + 1 + n].decode("latin-1"))
        at += 1 + n

def ask(name, qtype):
    # one DNS query to the container's own resolver (Docker's embedded DNS): the answers' names or addresses
    qid = random.randrange(65536)
    question = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    packet = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(3)
        s.sendto(packet, (nameserver(), 53))
        data = s.recv(4096)
    count = struct.unpack(">H", data[6:8])[0]
    at = 12 + len(question) + 4
    found = []
    for _ in range(count):
        _, at = read_name(data, at)
        rtype, _, _, length = struct.unpack(">HHIH", data[at:at + 10])
        at += 10
        if rtype == 12:
            found.append(read_name(data, at)[0])
        elif rtype == 1:
            found.append(socket.inet_ntoa(data[at:at + 4]))
        at += length
    return found

seen = {"hostname": socket.gethostname(), "env": dict(os.environ), "files": {}, "reverse": {}, "libc": {},
        "forward": {}}
for path in ("/etc/hostname", "/etc/hosts", "/etc/resolv.conf"):
    try:
        seen["files"][path] = open(path).read()
    except OSError as e:
        seen["files"][path] = f"error {e.errno}"
names = set()
for address in sys.argv[1:]:
    ptr = ".".join(reversed(address.split("."))) + ".in-addr.arpa"
    try:
        seen["reverse"][address] = ask(ptr, 12)
        names.update(seen["reverse"][address])
    except Exception as e:
        seen["reverse"][address] = f"error {e!r}"
    try:  # as a student's code would ask (libc)
        name, aliases, _ = socket.gethostbyaddr(address)
        seen["libc"][address] = [name, *aliases]
    except Exception as e:
        seen["libc"][address] = f"error {e!r}"
for name in sorted(names):  # each name the network gave, its service part, and its tasks.<service> form
    service = name.split(".")[0]
    for asked in (name, service, "tasks." + service):
        try:
            seen["forward"][asked] = ask(asked, 1)
        except Exception as e:
            seen["forward"][asked] = f"error {e!r}"
print(json.dumps(seen))
"""


def shell_command(script: str, *args: str) -> str:
    """A `sh -c` line that runs a Python script with arguments (no quoting trouble)."""
    encoded = base64.b64encode(script.encode()).decode()
    return ("python3 -c 'import base64,sys; exec(base64.b64decode(sys.argv[1]))' " + encoded + " "
            + " ".join(args))


def addresses_on_networks_of(client: docker.DockerClient, namespace: str) -> list[str]:
    """The addresses of every container of the namespace (what a neighbour finds by scanning its subnet)."""
    found = []
    for container in client.containers.list(filters={"label": f"{LABEL_OWNER}={namespace}"}):
        for settings in container.attrs["NetworkSettings"]["Networks"].values():
            if settings.get("IPAddress"):
                found.append(settings["IPAddress"])
    return sorted(set(found))


async def run_inside(s: Stack, endpoint: str, instance_id: str, command: str) -> dict[str, Any]:
    """`POST /i/<id>/run` on the instance's published port (127.0.0.1): what its shell printed."""
    async with s.http.post(f"http://{endpoint}/i/{instance_id}/run", data=command.encode()) as response:
        assert response.status == 200, await response.text()
        result = await response.json()
    assert result["rc"] == 0, result
    return json.loads(result["stdout"])  # type: ignore[no-any-return]


def strings_in(value: object) -> str:
    return json.dumps(value)


async def test_nothing_inside_an_instance_names_another_instances_id(
        nats_server, namespace, echo_image, docker_client) -> None:  # type: ignore[no-untyped-def]
    catalogue = echo_catalogue(size=POOL, extra='[apps.echo.env]\nECHO_SHELL = "1"\n')
    async with running_stack(nats_server.url, namespace, catalogue, gateway=False) as s:
        ready = await s.wait_ready(POOL)
        everyone = {r.id for r in s.records()}
        assert len(everyone) >= POOL
        addresses = addresses_on_networks_of(docker_client, namespace)
        assert len(addresses) >= POOL, addresses
        me = ready[0]
        seen = await run_inside(s, me.endpoint, me.id, shell_command(LOOK_AROUND, *addresses))
        names = [n for found in seen["reverse"].values() if isinstance(found, list) for n in found]
        # not vacuous: the embedded DNS did answer for the neighbours, and their names resolve forward
        assert len(names) >= POOL - 1, seen["reverse"]
        assert any(isinstance(v, list) and v for v in seen["forward"].values()), seen["forward"]
        assert seen["env"]["SWARMPOOL_ID"] == me.id  # its own id, nothing of a neighbour
        others = everyone - {me.id}
        leaked = [i[:4] for i in others if i in strings_in(seen)]
        assert not leaked, f"ids of other instances visible inside: {leaked} in {names}"
        outside_env = {k: v for k, v in seen.items() if k != "env"}
        assert me.id not in strings_in(outside_env), "its own id is in a name others can see too"
        # the engine still knows every record's service by its labels and id (nothing parsed from names)
        services = await s.swarm.list_ours()
        assert {x.id for x in services} >= {r.id for r in ready}
        assert all(x.id not in x.name for x in services)
