"""The warm pool on a real swarm and a real nats-server, driven through the real gateway."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import docker
import nats
import pytest

from swarmpool.bus.messages import Period
from swarmpool.bus.client import Bus
from swarmpool.bus.runtime import Context
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import parse
from swarmpool.functions import keeper
from swarmpool.swarm.adapter import Swarm
from tests.local_swarm import LocalSwarm
from tests.stack import claims_logged, echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker


async def test_click_redirects_to_a_fresh_instance_that_answers(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=2)) as s:
        ready = await s.wait_ready(2)
        response = await s.launch()
        assert response.status == 303
        location = response.headers["Location"]
        assert location.startswith("/i/") and location.endswith("/hello")
        instance_id = location.split("/")[2]
        assert instance_id in {r.id for r in ready}
        assert "no-store" in response.headers.get("Cache-Control", "")
        async with s.http.get(s.url + location) as page:
            assert page.status == 200
            body = await page.json()
        assert body["id"] == instance_id  # the page came from that very instance
        assert body["path"] == location
        assert "X-Forwarded-For" in body["headers"]
        async with s.http.ws_connect(f"{s.url}/i/{instance_id}/ws") as ws:
            await ws.send_str("hello pool")
            assert (await ws.receive_str(timeout=5)) == "hello pool"
            await ws.send_bytes(b"\x00\x01binary")
            assert (await ws.receive_bytes(timeout=5)) == b"\x00\x01binary"
        claimed = [r for r in s.records("claimed")]
        assert [r.id for r in claimed] == [instance_id]


async def test_fifty_concurrent_clicks_get_fifty_distinct_instances_with_two_claimer_hosts(
        nats_server, namespace) -> None:  # type: ignore[no-untyped-def]
    # invariant 1 is the claimers' CAS on the records: the instances are local (Docker is not the subject here)
    n = 50
    catalogue = echo_catalogue(size=n, max_=n, parallel=12).replace("claim_wait = 1.5", "claim_wait = 0.5")
    async with running_stack(nats_server.url, namespace, catalogue, hosts=2, docker=False) as s:
        await s.wait_ready(n, timeout=240)
        responses = await asyncio.gather(*(s.launch() for _ in range(n)))
        assert [r.status for r in responses] == [303] * n
        ids = [r.headers["Location"].split("/")[2] for r in responses]
        assert len(set(ids)) == n, "an instance was handed out twice"
        # one more click: the pool is at max, so it gets a place in line (its waiting page)
        extra = await s.launch()
        assert extra.status == 303 and "/launch/echo/ticket/" in extra.headers["Location"]
        # the event log shows every instance claimed exactly once
        claims = await claims_logged(s.nc, namespace, ids)
        assert sorted(claims.elements()) == sorted(ids)


async def test_pool_refills_after_claims_and_replaces_a_dead_instance(nats_server, namespace) -> None:  # type: ignore[no-untyped-def]
    """The keeper's part: claims are refilled, a die event fails a warm instance and it is replaced (the
    instances are local; a real container's death is the next test's)."""
    # the claims load no HTML page: their refills start at the settle cap, shortened (settling is test_settle's)
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=3, settle_cap=1), docker=False) as s:
        first = {r.id for r in await s.wait_ready(3)}
        for _ in range(2):
            assert (await s.launch()).status == 303
        await wait_for(lambda: len(s.records("ready")) == 3 and len(s.records("claimed")) == 2,
                       timeout=60, what="refill to 3 ready beside 2 claimed")
        victim = s.records("ready")[0]
        assert isinstance(s.swarm, LocalSwarm)
        await s.swarm.kill(victim.id)
        await wait_for(lambda: s.store.get("echo", victim.id) is None, timeout=30,
                       what="the dead instance's record to go")
        await wait_for(lambda: len(s.records("ready")) == 3 and victim.id not in {r.id for r in s.records()},
                       timeout=60, what="a replacement for the dead instance")
        assert {r.id for r in s.records("ready")} != first
        assert victim.id not in {svc.id for svc in await s.swarm.list_ours()}


async def test_a_killed_warm_container_is_replaced(
        nats_server, namespace, echo_image, docker_client: docker.DockerClient) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1)) as s:
        victim = (await s.wait_ready(1))[0]
        _container_of(docker_client, namespace, victim.id).kill()
        await wait_for(lambda: s.store.get("echo", victim.id) is None, timeout=30,
                       what="the killed instance's record to go")
        await wait_for(lambda: len(s.records("ready")) == 1 and victim.id not in {r.id for r in s.records()},
                       timeout=60, what="a replacement for the killed instance")
        assert victim.id not in {svc.id for svc in await s.swarm.list_ours()}


async def test_claimed_instance_whose_container_dies_shows_session_ended(
        nats_server, namespace, echo_image, docker_client: docker.DockerClient) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1)) as s:
        await s.wait_ready(1)
        location = (await s.launch()).headers["Location"]
        instance_id = location.split("/")[2]
        async with s.http.get(s.url + location) as page:
            assert page.status == 200
        _container_of(docker_client, namespace, instance_id).kill()
        await wait_for(lambda: s.store.get("echo", instance_id) is None, timeout=30, what="retirement")

        async def ended() -> bool:
            async with s.http.get(s.url + location) as page:
                return page.status == 404 and "start a new one" in (await page.text()).lower()

        await wait_for(ended, timeout=10, what="the session-ended page")
        async with s.http.get(s.url + location) as page:
            assert "/launch/echo" in await page.text()


def _container_of(client: docker.DockerClient, namespace: str, instance_id: str):  # type: ignore[no-untyped-def]
    containers = client.containers.list(filters={"label": [f"swarmpool.owner={namespace}",
                                                           f"swarmpool.id={instance_id}"]})
    assert len(containers) == 1
    return containers[0]


async def test_reaper_retires_idle_disconnected_and_expired_but_keeps_a_busy_one(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    # idle: no client traffic for 3 s; disconnected: no connection for 2 s; lifetime: 8 s
    async with running_stack(nats_server.url, namespace,
                             echo_catalogue(size=4, max_=8, idle="3s", grace="2s", lifetime="8s"), docker=False) as s:
        await s.wait_ready(4)
        ids = [(await s.launch()).headers["Location"].split("/")[2] for _ in range(3)]
        idle_id, busy_id, socket_id = ids
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def keep_busy() -> None:  # real client traffic every 0.3 s over a held WebSocket
            async with s.http.ws_connect(f"{s.url}/i/{busy_id}/ws") as ws:
                while True:
                    await ws.send_str("tick")
                    await ws.receive_str(timeout=5)
                    await asyncio.sleep(0.3)

        async def hold_socket_silently() -> None:  # open tab: connection held, no traffic at all
            async with s.http.ws_connect(f"{s.url}/i/{socket_id}/ws") as ws:
                await ws.receive(timeout=60)

        busy = asyncio.create_task(keep_busy())
        silent = asyncio.create_task(hold_socket_silently())
        try:
            # the untouched one goes first (disconnect grace 2 s, it never connected)
            await wait_for(lambda: s.store.get("echo", idle_id) is None, timeout=15, what="idle retirement")
            # the silent socket holds a connection, so only the idle rule (3 s) can retire it
            await wait_for(lambda: s.store.get("echo", socket_id) is None, timeout=15,
                           what="retirement of a connected but silent tab")
            assert loop.time() - started >= 3
            # the busy one survives idle and disconnect rules, until its max lifetime
            assert s.store.get("echo", busy_id) is not None
            assert not busy.done()
            await asyncio.sleep(0)
            await wait_for(lambda: s.store.get("echo", busy_id) is None, timeout=20,
                           what="max-lifetime retirement of a busy session")
            assert loop.time() - started >= 7.5
        finally:
            busy.cancel()
            silent.cancel()
            await asyncio.gather(busy, silent, return_exceptions=True)
        async with s.http.get(f"{s.url}/i/{busy_id}/") as page:
            assert page.status == 404


async def test_unknown_and_unclaimed_ids_get_404_and_reach_no_instance(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1), docker=False) as s:
        ready = (await s.wait_ready(1))[0]
        for path in (f"/i/{ready.id}/", "/i/" + "a" * 26 + "/", "/i/not-an-id/", "/launch/nope"):
            async with s.http.get(s.url + path) as page:
                assert page.status == 404, path
        assert s.store.get("echo", ready.id).instance.state == "ready"  # type: ignore[union-attr]


async def test_healthz(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=0, max_=1), docker=False) as s:
        async with s.http.get(s.url + "/healthz") as r:
            assert r.status == 200




async def test_warm_up_never_overshoots_the_target(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    """Invariant 4: ready + starting converges to the target and never exceeds it while warming."""
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=6, max_=30, parallel=6, settle_cap=1),
                             docker=False) as s:  # the claims load no page: refills at a 1 s settle cap
        highest = 0

        def watch(old, new) -> None:  # type: ignore[no-untyped-def]
            nonlocal highest
            highest = max(highest, len([r for r in s.store.all() if r.state in ("ready", "starting")]))

        s.store.on_change(watch)
        await s.wait_ready(6)
        # a burst of claims: each claim triggers a top-up at once, concurrently
        responses = await asyncio.gather(*(s.launch() for _ in range(4)))
        assert [r.status for r in responses] == [303] * 4
        await wait_for(lambda: len(s.records("ready")) == 6, timeout=60, what="refill to 6")
        ticks = await s.nc.subscribe(s.hosts[0].subjects.tick(Period.RECONCILE))
        for _ in range(3):  # three more reconcile passes
            await ticks.next_msg(timeout=10)
        await ticks.unsubscribe()
        assert highest == 6
        assert len(s.records("ready")) == 6 and len(await s.swarm.list_ours()) == 10


async def test_two_hosts_topping_up_at_once_never_start_more_than_max(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    """Each host counts the pool, then writes the records it starts: counting at the same moment,
    both used to start the same missing instances (a pool of max 3 got 6; CI saw a 51st of 50)."""
    text = echo_catalogue(size=3, max_=3).replace("max_instances = 120", "max_instances = 120\nstart_budget = 8")
    catalogue = parse(text, "test-catalogue")
    subjects = Subjects(namespace)
    swarm = Swarm(namespace)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(swarm.close)
        stack.push_async_callback(swarm.remove_all)
        hosts = []
        for name in ("a", "b"):  # each host its own connection and mirror, like separate processes
            nc = await nats.connect(nats_server.url)
            stack.push_async_callback(nc.drain)
            store = await stack.enter_async_context(await InstanceStore.open(nc, subjects, time.time))
            config = await ConfigStore.open(nc, subjects)
            stack.push_async_callback(config.close)
            hosts.append(Context(bus=Bus(nc), subjects=subjects, store=store, config=config, catalogue=catalogue,
                                 swarm=swarm, namespace=namespace, host=name))
        started = await asyncio.gather(*(keeper.top_up(ctx, "echo") for ctx in hosts))
        assert sorted(started) == [0, 3]  # one host started the pool; the other counted its records
        for ctx in hosts:
            await ctx.store.caught_up()
            assert len(ctx.store.all("echo")) == 3
        assert len(await swarm.list_ours()) == 3
