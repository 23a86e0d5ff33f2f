"""A host is ready when the server routes to it, not when its SUBs sit in the client's buffer.

Another connection (the gateway, an operator's CLI) may publish the moment a host says it is up;
through a slow link to the server (here a local proxy that delays every client->server byte), a
host that did not wait for its subscriptions to land would miss those messages: a lost claim,
an admin request answered "no responders".
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

from swarmpool.bus.messages import Period, Tick
from swarmpool.bus.metrics import HostMetrics
from swarmpool.bus.runtime import Context, Handlers, Runtime, encode
from swarmpool.bus.service import Endpoint, serve
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import EmbeddedNats
from tests.stack import wait_for

DELAY = 0.3  # every client->server chunk through the slow link waits this long


@asynccontextmanager
async def slow_link(url: str) -> AsyncIterator[str]:
    """A 127.0.0.1 proxy to the NATS server that delays what the client sends (not what it receives)."""
    target = urlparse(url)
    pumps: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def accept(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection(target.hostname, target.port)
        for task in (pump(client_r, server_w, DELAY), pump(server_r, client_w, 0)):
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
            ctx = Context(nc=host_nc, subjects=subjects, store=store, config=config, catalogue=Catalogue(),
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
