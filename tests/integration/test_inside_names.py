"""What code inside an instance sees names no other instance's id: DNS (forward and reverse) on its network,
its hostname, /etc/hosts, its environment. A student's notebook cell is played by the echo app's shell
(ECHO_SHELL=1, `POST <prefix>run`); every id is taken from the records of a pool of four.

Traffic: the test reaches the instances only at 127.0.0.1 (their published ports); the code inside asks
Docker's embedded DNS (in the container) about addresses and names that exist on its own network.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import docker
import msgspec
import pytest

from swarmpool.bus.messages import EventKind, Instance, InstanceEvent
from swarmpool.bus.subjects import Subjects
from swarmpool.functions.policy import spec_version
from swarmpool.ids import new_instance_id
from swarmpool.swarm.model import LABEL_APP, LABEL_ID, LABEL_OWNER, LABEL_PORT
from tests.inside import LOOK_AROUND, ids_in, shell_command
from tests.stack import Stack, echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker

POOL = 4


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
        leaked = ids_in(seen, everyone - {me.id})
        assert not leaked, f"ids of other instances visible inside: {leaked} in {names}"
        assert not ids_in({k: v for k, v in seen.items() if k != "env"}, {me.id}), \
            "its own id is in a name others can see too"
        # the engine still knows every record's service by its labels and id (nothing parsed from names)
        services = await s.swarm.list_ours()
        assert {x.id for x in services} >= {r.id for r in ready}
        assert all(x.id not in x.name for x in services)


async def _running(s: Stack, service_id: str) -> bool:
    return (await s.swarm.status(service_id)).state == "running"


async def test_an_instance_named_after_its_id_by_an_older_version_is_recycled(
        nats_server, namespace, echo_image, docker_client) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1), gateway=False) as s:
        (current,) = await s.wait_ready(1)
        old_id = new_instance_id()
        labels = {LABEL_OWNER: namespace, LABEL_APP: "echo", LABEL_ID: old_id, LABEL_PORT: "8888"}
        service = await asyncio.to_thread(  # as the older version made them: the id in the name, no handle
            docker_client.services.create, echo_image, name=f"{namespace}-echo-{old_id}", labels=labels,
            container_labels=labels, env=[f"SWARMPOOL_PREFIX=/i/{old_id}/"])
        await wait_for(lambda: _running(s, service.id), timeout=60, what="the old-style service running")
        events = await s.nc.subscribe(Subjects(namespace).instance_event("echo", old_id, EventKind.RETIRING))
        try:
            # warm before the current one: by age alone (a surplus) the current one would go
            assert current.ready_at is not None
            await s.store.create(Instance(id=old_id, app="echo", state="ready", service_id=service.id,
                                          created_at=current.created_at - 60, ready_at=current.ready_at - 60,
                                          spec=spec_version(s.catalogue.apps["echo"])))
            event = msgspec.json.decode((await events.next_msg(timeout=30)).data, type=InstanceEvent)
            assert event.reason == "recycled: its service is named after its id"
            await wait_for(lambda: s.store.get("echo", old_id) is None, timeout=30, what="the old record deleted")
            assert all(x.service_id != service.id for x in await s.swarm.list_ours())
            assert s.store.get("echo", current.id) is not None  # the current one stays
        finally:
            await events.unsubscribe()
