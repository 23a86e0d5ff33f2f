"""A host is ready when the server routes to it, not when its SUBs sit in the client's buffer.

Another connection (the gateway, an operator's CLI) may publish the moment a host says it is up;
a host that did not wait for its subscriptions to land would miss those messages: a lost claim,
an admin request answered "no responders". Waiting for a flush is not enough: nats-py writes the
PING of ``flush()`` straight to the socket, ahead of SUBs still in its buffer, so its PONG can
come back first. The link here (a local proxy to the server) lets such a PING through at once and
delays everything else (in order) by DELAY: what a busy server does when it reads the PING and
gets to the SUBs later. CI saw it: the request right after start answered "no responders".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlparse

import msgspec
import nats
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import InstanceEvent, Period, Tick
from swarmpool.bus.metrics import HostMetrics
from swarmpool.bus.operator import follow_events
from swarmpool.bus.runtime import Context, Handlers, Runtime
from swarmpool.bus.wire import encode
from swarmpool.bus.service import Endpoint, serve
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import EmbeddedNats
from tests.stack import wait_for

DELAY = 0.3  # how long the link holds what follows a PING
PING = b"PING\r\n"


@asynccontextmanager
async def slow_link(url: str) -> AsyncIterator[str]:
    """A 127.0.0.1 proxy to the NATS server for what a busy server does: it answers a PING at once and
    gets to the connection's next commands DELAY later. What a client sends goes through up to and
    including each PING, then the rest waits DELAY; order is kept."""
    target = urlparse(url)
    pumps: set[asyncio.Task[None]] = set()

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        pending, arrived, done = bytearray(), asyncio.Event(), False

        async def receive() -> None:
            nonlocal done
            try:
                while data := await reader.read(65536):
                    pending.extend(data)
                    arrived.set()
            finally:
                done = True
                arrived.set()

        receiver = asyncio.create_task(receive())
        hold_until = 0.0
        try:
            while pending or not done:
                await arrived.wait()
                arrived.clear()
                while pending:
                    await asyncio.sleep(max(0.0, hold_until - loop.time()))
                    cut = pending.find(PING)
                    n = len(pending) if cut < 0 else cut + len(PING)
                    writer.write(bytes(pending[:n]))
                    del pending[:n]
                    await writer.drain()
                    if cut >= 0:
                        hold_until = loop.time() + DELAY
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            receiver.cancel()
            writer.close()

    async def downstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        for task in (upstream(client_r, server_w), downstream(server_r, client_w)):
            pumps.add(asyncio.create_task(task))

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        await server.wait_closed()


class Ping(msgspec.Struct):
    n: int = 0


async def test_a_runtime_is_ready_only_once_its_subscriptions_reached_the_server(
        nats_server: EmbeddedNats, nc: NATS, subjects: Subjects, store: InstanceStore) -> None:
    seen: list[int] = []
    table = Handlers()

    @table.on(lambda s: s.tick(Period.FAST), Tick)
    async def record(ctx: Context, tick: Tick) -> None:
        seen.append(tick.seq)

    config = await ConfigStore.open(nc, subjects)
    async with slow_link(nats_server.url) as url:
        host_nc = await nats.connect(url)
        try:
            ctx = Context(bus=Bus(host_nc), subjects=subjects, store=store, config=config, catalogue=Catalogue(),
                          swarm=None, namespace=subjects.prefix)  # type: ignore[arg-type]
            async with Runtime(ctx, [table]):
                # at once, from another connection: before, the SUB was still on its way
                await nc.publish(subjects.tick(Period.FAST), encode(Tick(period=Period.FAST, at=time.time(), seq=1)))
                await wait_for(lambda: seen == [1], timeout=5, what="the tick published right after start")
        finally:
            await host_nc.drain()
            await config.close()


async def test_a_service_answers_the_first_request_after_it_starts(nats_server: EmbeddedNats, nc: NATS,
                                                                   subjects: Subjects) -> None:
    async def echo(ping: Ping) -> Ping:
        return Ping(n=ping.n + 1)

    endpoint = Endpoint(name="ping", subject=f"{subjects.prefix}.test.ping", request=Ping, handle=echo)
    async with slow_link(nats_server.url) as url:
        host_nc = await nats.connect(url)
        try:
            async with serve(host_nc, name=f"{subjects.prefix}-test", version="0.0.0", description="test",
                             endpoints=[endpoint], metrics=HostMetrics(), queue="test"):
                reply = await nc.request(endpoint.subject, encode(Ping(n=1)), timeout=5)  # before: no responders
                assert msgspec.json.decode(reply.data, type=Ping).n == 2
        finally:
            await host_nc.drain()


async def test_an_event_follower_sees_the_first_event_after_it_starts(nats_server: EmbeddedNats, nc: NATS,
                                                                      subjects: Subjects) -> None:
    seen: list[object] = []
    event = InstanceEvent(app="echo", id="a" * 26, event="ready", state="ready", at=time.time())
    async with slow_link(nats_server.url) as url:
        host_nc = await nats.connect(url)
        try:
            stop = await follow_events(Bus(host_nc), subjects, seen.append)
            await nc.publish(subjects.instance_event(event.app, event.id, event.event), encode(event))
            await wait_for(lambda: seen == [event], timeout=5, what="the event published right after start")
            await stop()
        finally:
            await host_nc.drain()
