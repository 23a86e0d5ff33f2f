"""The handler runtime on a real nats-server: a busy singleton pass drops ticks instead of queueing them."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS

from swarmpool.bus.messages import Period, Tick
from swarmpool.bus.runtime import Context, Handlers, Runtime, encode
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from tests.stack import wait_for


async def test_skip_when_busy_drops_messages_while_the_handler_runs(nc: NATS, subjects: Subjects,
                                                                   store: InstanceStore) -> None:
    release = asyncio.Event()
    calls: list[int] = []
    table = Handlers()

    @table.on(lambda s: s.tick(Period.FAST), Tick, concurrency=1, skip_when_busy=True)
    async def slow_pass(ctx: Context, tick: Tick) -> None:
        calls.append(tick.seq)
        await release.wait()

    config = await ConfigStore.open(nc, subjects)
    ctx = Context(nc=nc, subjects=subjects, store=store, config=config, catalogue=Catalogue(), swarm=None,  # type: ignore[arg-type]
                  namespace=subjects.prefix)
    try:
        async with Runtime(ctx, [table]):
            for seq in (1, 2, 3):
                await nc.publish(subjects.tick(Period.FAST), encode(Tick(period=Period.FAST, at=time.time(), seq=seq)))
            await nc.flush()
            await wait_for(lambda: ctx.metrics.value("swarmpool_messages_dropped_total", handler="test_runtime.slow_pass",
                                                   reason="busy") == 2,
                           timeout=5, what="two ticks dropped")
            await wait_for(lambda: calls == [1], timeout=5, what="the first tick's pass to start")
            release.set()

            async def next_tick_runs() -> bool:  # the pass ends a moment after release: tick until one runs
                await nc.publish(subjects.tick(Period.FAST), encode(Tick(period=Period.FAST, at=time.time(), seq=4)))
                await asyncio.sleep(0.05)
                return calls[-1] == 4

            await wait_for(next_tick_runs, timeout=5, what="a tick after the pass ended")
            assert calls[0] == 1 and set(calls[1:]) == {4}
    finally:
        await config.close()
