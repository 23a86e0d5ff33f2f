"""The handler runtime on a real nats-server: a busy singleton pass drops ticks instead of queueing them."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client as NATS

from swarmpool.bus.messages import Period, Tick
from swarmpool.bus.client import Bus
from swarmpool.bus.runtime import LEASE_RENEW, Context, Handlers, Runtime
from swarmpool.bus.wire import encode
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
    ctx = Context(bus=Bus(nc), subjects=subjects, store=store, config=config, catalogue=Catalogue(), swarm=None,  # type: ignore[arg-type]
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


async def test_a_singleton_runs_on_one_host_and_moves_when_that_host_stops(nc: NATS, subjects: Subjects,
                                                                         store: InstanceStore) -> None:
    running: list[str] = []
    table = Handlers()

    @table.singleton("test-lease")
    async def only_one(ctx: Context) -> None:
        running.append(ctx.host)
        try:
            await asyncio.Event().wait()
        finally:
            running.remove(ctx.host)

    config = await ConfigStore.open(nc, subjects)

    def host(name: str) -> Context:
        return Context(bus=Bus(nc), subjects=subjects, store=store, config=config, catalogue=Catalogue(),
                       swarm=None, namespace=subjects.prefix, host=name)  # type: ignore[arg-type]

    try:
        async with Runtime(host("a"), [table]):
            await wait_for(lambda: running == ["a"], timeout=5, what="host a to take the lease")
            async with Runtime(host("b"), [table]):
                await asyncio.sleep(LEASE_RENEW + 0.5)  # b tried at least twice meanwhile
                assert running == ["a"]
            # a still holds it after b stopped
            assert running == ["a"]
        assert running == []
        async with Runtime(host("b"), [table]):  # a released the lease on its way out
            await wait_for(lambda: running == ["b"], timeout=LEASE_RENEW * 3, what="host b to take over")
    finally:
        await config.close()
