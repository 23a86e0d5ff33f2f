"""The swarm adapter against the real Docker engine: create, reach, watch, kill and remove echo instances."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time

import aiohttp
import docker
import msgspec
import pytest

from swarmpool.ids import new_handle
from swarmpool.swarm import raw_api
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import (LABEL_APP, LABEL_ID, LABEL_OWNER, EngineEvent, InstanceSpec, SwarmError,
                                   SwarmUnavailable, TaskStatus)
from swarmpool.swarm.names import service_name
from swarmpool.swarm.tasks import ENDED_TASK_STATES, MISSING
from tests.docker_fixtures import new_instance_id, wait_for

pytestmark = pytest.mark.docker


def echo_spec(image: str, **env: str) -> InstanceSpec:
    instance_id = new_instance_id()
    return InstanceSpec(
        app="echo",
        id=instance_id,
        image=image,
        port=8888,
        env={"SWARMPOOL_PREFIX": f"/i/{instance_id}/", **env},
        cpus=0.5,
        memory=128 * 1024 * 1024,
    )


async def wait_running(swarm: Swarm, service_id: str, timeout: float = 60.0) -> TaskStatus:
    async def running() -> TaskStatus | None:
        status = await swarm.status(service_id)
        assert status.state not in ENDED_TASK_STATES | {MISSING}, status
        return status if status.state == "running" and status.endpoint else None

    return await wait_for(running, timeout=timeout, what=f"service {service_id[:12]} running")


async def get_json(url: str, timeout: float = 30.0) -> dict[str, object]:
    """GET url once the server accepts connections (a running task may not listen yet)."""
    async with aiohttp.ClientSession() as http:

        async def answer() -> dict[str, object] | None:
            try:
                async with http.get(url) as response:
                    response.raise_for_status()
                    body: dict[str, object] = await response.json()
                    return body
            except aiohttp.ClientConnectionError:
                return None

        return await wait_for(answer, timeout=timeout, what=f"an answer from {url}")


async def test_create_reach_list_and_logs(swarm: Swarm, echo_image: str) -> None:
    spec = echo_spec(echo_image, ECHO_READY_MARKER="echo test marker up")
    service_id = await swarm.create(spec)

    status = await wait_running(swarm, service_id)
    host, _, port = status.endpoint.partition(":")
    assert host == "127.0.0.1" and int(port) > 0
    assert status.container_id

    body = await get_json(f"http://{status.endpoint}/i/{spec.id}/")
    assert body["id"] == spec.id
    assert body["path"] == f"/i/{spec.id}/"
    assert await swarm.probe_http(status.endpoint, f"/i/{spec.id}/healthz")
    assert not await swarm.probe_http("127.0.0.1:1", "/")  # nothing listens there

    async def marker_logged() -> bool:
        return await swarm.logs_contain(service_id, "echo test marker up")

    await wait_for(marker_logged, timeout=30, what="ready marker in the logs")
    assert not await swarm.logs_contain(service_id, "never printed by echo")

    ours = await swarm.list_ours()
    mine = [s for s in ours if s.service_id == service_id]
    assert len(mine) == 1
    assert mine[0].app == "echo" and mine[0].id == spec.id  # from the labels
    assert mine[0].handle and mine[0].name == service_name(swarm.namespace, "echo", mine[0].handle)
    assert spec.id not in mine[0].name  # names are seen by neighbours (DNS): the random handle, never the id
    assert abs(mine[0].created_at - time.time()) < 300
    assert [s.service_id for s in await swarm.list_ours(app="echo")].count(service_id) == 1
    assert await swarm.list_ours(app="other") == []

    assert await swarm.remove(service_id) is True


async def test_killed_container_gives_die_event_and_failed_status(
    swarm: Swarm, echo_image: str, docker_client: docker.DockerClient
) -> None:
    spec = echo_spec(echo_image)
    service_id = await swarm.create(spec)
    status = await wait_running(swarm, service_id)

    since = time.time()
    await asyncio.to_thread(docker_client.containers.get(status.container_id).kill)

    seen: list[EngineEvent] = []
    async with contextlib.aclosing(swarm.events(since=since - 1)) as events:

        async def next_die() -> EngineEvent:
            async for event in events:
                seen.append(event)
                if event.type == "container" and event.action == "die" and event.id == spec.id:
                    return event
            raise AssertionError(f"event stream ended; saw {seen}")

        die = await asyncio.wait_for(next_die(), timeout=30)
        assert die.app == "echo"
        assert die.service_id == service_id
        assert die.container_id == status.container_id
        assert die.exit_code == 137  # SIGKILL

        async def ended() -> TaskStatus | None:
            current = await swarm.status(service_id)
            return current if current.state in ENDED_TASK_STATES else None

        final = await wait_for(ended, timeout=30, what="task failed after kill")
        assert final.exit_code == 137
        assert final.endpoint == ""

        # Removing the service is reported too (service events carry only the name: the id is not in it).
        assert await swarm.remove(service_id) is True

        async def next_remove() -> EngineEvent:
            async for event in events:
                if event.type == "service" and event.action == "remove" and event.service_id == service_id:
                    return event
            raise AssertionError("event stream ended")

        removed = await asyncio.wait_for(next_remove(), timeout=30)
        assert (removed.app, removed.id) == ("echo", "")


async def test_events_generator_stops_its_reader_thread(swarm: Swarm) -> None:
    def readers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name == f"swarm-events-{swarm.namespace}"]

    before = set(readers())  # other tests' generators may end (and their threads) meanwhile

    async def follow() -> None:  # late events of earlier tests may arrive: keep consuming
        async for _ in swarm.events():
            pass

    consumer = asyncio.ensure_future(follow())
    ours = await wait_for(lambda: asyncio.sleep(0, set(readers()) - before), timeout=10, what="reader thread")
    consumer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await consumer
    await wait_for(lambda: asyncio.sleep(0, not any(t.is_alive() for t in ours)), timeout=10,
                   what="reader thread exit")


async def test_remove_is_idempotent_and_status_missing(swarm: Swarm, echo_image: str) -> None:
    service_id = await swarm.create(echo_spec(echo_image))
    assert await swarm.remove(service_id) is True
    assert await swarm.remove(service_id) is False
    assert await swarm.remove("doesnotexist0000000000000") is False
    assert (await swarm.status(service_id)).state == "missing"
    assert not await swarm.logs_contain(service_id, "echo ready")


async def test_unpublished_instance_is_named_by_service(swarm: Swarm, echo_image: str) -> None:
    spec = InstanceSpec(app="echo", id=new_instance_id(), handle=new_handle(), image=echo_image, port=8888,
                        publish=False)
    service_id = await swarm.create(spec)
    status = await wait_running(swarm, service_id)
    assert status.endpoint == f"{service_name(swarm.namespace, 'echo', spec.handle)}:8888"
    await swarm.remove(service_id)


async def test_a_service_named_after_its_id_by_an_older_version_is_found_by_label_and_removed(
        swarm: Swarm, echo_image: str, docker_client: docker.DockerClient) -> None:
    instance_id = new_instance_id()
    labels = {LABEL_OWNER: swarm.namespace, LABEL_APP: "echo", LABEL_ID: instance_id}
    old = await asyncio.to_thread(
        docker_client.services.create, echo_image, name=f"{swarm.namespace}-echo-{instance_id}", labels=labels,
        container_labels=labels, env=[f"SWARMPOOL_PREFIX=/i/{instance_id}/"])
    found = [s for s in await swarm.list_ours(app="echo") if s.service_id == old.id]
    assert [(s.id, s.handle) for s in found] == [(instance_id, "")]
    assert await swarm.remove(old.id) is True
    assert all(s.service_id != old.id for s in await swarm.list_ours())


async def test_missing_image_is_a_clear_error(swarm: Swarm) -> None:
    spec = InstanceSpec(app="echo", id=new_instance_id(), image="swarmpool/nonexistent:never", port=8888)
    with pytest.raises(SwarmError, match=r"image swarmpool/nonexistent:never not found on this node; build it first"):
        await swarm.create(spec)
    assert all(s.id != spec.id for s in await swarm.list_ours())


async def test_bad_names_are_refused(swarm: Swarm, echo_image: str) -> None:
    with pytest.raises(SwarmError, match="invalid service name"):
        await swarm.create(InstanceSpec(app="Echo_App", id=new_instance_id(), image=echo_image, port=8888))
    with pytest.raises(ValueError, match="namespace"):
        Swarm("has-dash")


async def test_unreachable_engine_is_swarm_unavailable() -> None:
    client = docker.DockerClient(base_url="unix:///nonexistent/docker.sock", version="1.41")
    adapter = Swarm("tunreach", client=client)
    try:
        with pytest.raises(SwarmUnavailable, match="Docker engine did not answer"):
            await adapter.ping()
    finally:
        await adapter.close()


async def test_one_owner_per_namespace_by_a_version_checked_lease(swarm: Swarm,
                                                                   docker_client: docker.DockerClient) -> None:
    """The owner lease on the engine: refused to a second holder while fresh, taken over in the holder's own name
    or once stale, renewed and handed over by version-checked updates (swarm/raw_api.py), released by its holder."""
    name = f"swarmpool-owner-{swarm.namespace}"
    try:
        assert await swarm.claim_namespace("a", ttl=60) is None
        held = await swarm.claim_namespace("b", ttl=60)
        assert held is not None and held.startswith("a (renewed ")
        first = docker_client.api.inspect_config(name)
        assert await swarm.renew_namespace("a") and not await swarm.renew_namespace("b")
        assert await swarm.claim_namespace("a", ttl=60) is None  # its own name: a copy of us that died
        # an update that read the lease before someone else changed it is refused, not applied
        assert not raw_api.update_config(docker_client.api, first["ID"], first["Version"]["Index"], first["Spec"])
        assert await swarm.claim_namespace("b", ttl=-1) is None  # not renewed for ttl seconds: taken over
        assert not await swarm.renew_namespace("a")
        await swarm.release_namespace("a")  # no longer a's: stays
        labels = docker_client.api.inspect_config(name)["Spec"]["Labels"]
        assert labels["swarmpool.lease.holder"] == "b" and labels["swarmpool.owner-lease"] == swarm.namespace
        await swarm.release_namespace("b")
        with pytest.raises(docker.errors.NotFound):
            docker_client.api.inspect_config(name)
        assert await swarm.claim_namespace("a", ttl=60) is None  # free again
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.api.remove_config(name)


async def test_remove_all_removes_only_our_namespace(swarm: Swarm, echo_image: str) -> None:
    other = Swarm(swarm.namespace + "x")
    try:
        theirs = await other.create(echo_spec(echo_image))
        ours = [await swarm.create(echo_spec(echo_image)) for _ in range(2)]
        assert await swarm.remove_all() >= 2
        assert [(await swarm.status(s)).state for s in ours] == ["missing", "missing"]
        assert (await other.status(theirs)).state != "missing"
    finally:
        await other.remove_all()
        await other.close()


async def test_instances_run_unprivileged_and_limited(swarm: Swarm, echo_image: str,
                                                      docker_client: docker.DockerClient) -> None:
    image_user = echo_spec(echo_image)  # the echo image's own user (1000:1000) is kept
    # the catalogue overrides it (a root `user` the app trusts)
    as_root_image = msgspec.structs.replace(echo_spec(echo_image), user="0", trusted_user=True)
    plain = InstanceSpec(app="echo", id=new_instance_id(), image=echo_image, port=8888, pids=600, cap_add=["CHOWN"],
                         command=["sleep", "600"])
    ids = [await swarm.create(spec) for spec in (image_user, as_root_image, plain)]
    statuses = [await wait_running(swarm, service_id) for service_id in ids]
    users = [docker_client.api.inspect_service(i)["Spec"]["TaskTemplate"]["ContainerSpec"]["User"] for i in ids]
    assert users == ["1000:1000", "0", "1000:1000"]  # always named in the service spec

    host = docker_client.api.inspect_container(statuses[2].container_id)["HostConfig"]
    assert (host["CapDrop"], host["CapAdd"], host["PidsLimit"]) == (["ALL"], ["CHOWN"], 600)
    caps = docker_client.containers.get(statuses[0].container_id).exec_run(["grep", "CapEff", "/proc/self/status"])
    assert caps.output.split()[-1] == b"0000000000000000"

    # published ports bind the loopback only, on the namespace's own bridge
    ports = docker_client.api.inspect_container(statuses[0].container_id)["NetworkSettings"]["Ports"]
    assert {b["HostIp"] for b in ports["8888/tcp"]} == {"127.0.0.1"}
    for service_id in ids:
        await swarm.remove(service_id)


async def test_a_root_image_runs_as_an_unprivileged_uid_with_a_home(swarm: Swarm, echo_image: str,
                                                                   docker_client: docker.DockerClient) -> None:
    root_image = f"swarmpool/echo-as-root:{swarm.namespace}"  # the echo image with USER root, made here
    container = docker_client.containers.create(echo_image, ["true"], user="0")
    try:
        container.commit(*root_image.split(":"), conf={"User": "", "Cmd": ["python3", "/app/app.py"]})
    finally:
        container.remove()
    service_id = ""
    try:
        spec = msgspec.structs.replace(echo_spec(echo_image), image=root_image)
        service_id = await swarm.create(spec)
        status = await wait_running(swarm, service_id)
        body = await get_json(f"http://{status.endpoint}/i/{spec.id}/")
        assert body["id"] == spec.id  # an ordinary image still works
        run = docker_client.containers.get(status.container_id).exec_run(
            ["sh", "-c", 'id -u; touch "$HOME/written" && echo "$HOME"'])
        assert run.output.decode().split() == ["10001", "/home/swarmpool"]
    finally:
        if service_id:
            await swarm.remove(service_id)
        await wait_for(lambda: _gone(docker_client, root_image), timeout=30, what="containers of the root image gone")
        docker_client.images.remove(root_image, force=True)


async def _gone(client: docker.DockerClient, image: str) -> bool:
    return not client.containers.list(all=True, filters={"ancestor": image})


async def test_echo_answers_only_under_its_prefix(swarm: Swarm, echo_image: str) -> None:
    spec = echo_spec(echo_image)
    service_id = await swarm.create(spec)
    status = await wait_running(swarm, service_id)
    await get_json(f"http://{status.endpoint}/i/{spec.id}/")
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/healthz", f"/i/{new_instance_id()}/", "/i/"):
            async with http.get(f"http://{status.endpoint}{path}") as response:
                assert response.status == 404, path
                assert spec.id not in await response.text()
    await swarm.remove(service_id)


async def test_status_of_many_services_asked_at_once_costs_the_engine_one_task_listing(
        swarm: Swarm, swarm_namespace: str, echo_image: str) -> None:
    # the prober asks the status of every starting instance each probe period: with 60 starting, two engine
    # calls each took the CPU the starts need; one listing of the namespace's tasks now answers all of them
    client = docker.from_env()
    calls: dict[str, int] = {"tasks": 0, "inspect_service": 0}
    for name in calls:
        def counted(*args: object, _real: object = getattr(client.api, name), _name: str = name,
                    **kwargs: object) -> object:
            calls[_name] += 1
            return _real(*args, **kwargs)  # type: ignore[operator]
        setattr(client.api, name, counted)
    counting = Swarm(swarm_namespace, client)
    try:
        ids = [await counting.create(echo_spec(echo_image)) for _ in range(3)]
        for service_id in ids:
            await wait_running(counting, service_id)
        calls.update(tasks=0, inspect_service=0)
        statuses = await asyncio.gather(*(counting.status(s) for s in ids * 3))
        assert [s.state for s in statuses] == ["running"] * 9 and all(s.endpoint for s in statuses)
        assert calls["tasks"] <= 1 and calls["inspect_service"] == 0, calls  # 0: the last listing is still fresh
        # a removed service is missing at once, though its task may still be listed for a while
        await counting.remove(ids[0])
        assert (await counting.status(ids[0])).state == MISSING
    finally:
        await counting.remove_all()
        await counting.close()
