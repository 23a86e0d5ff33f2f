"""The runtime stops its tasks even when one swallows a cancellation (as a 3.11 `wait_for` that
completes at the moment it is cancelled does, inside nats-py's requests): no hang at shutdown."""

from __future__ import annotations

import asyncio

from swarmpool.bus.runtime import Context, Handlers, Runtime
from swarmpool.bus.spec import Catalogue


async def test_a_task_that_swallows_one_cancellation_still_stops() -> None:
    swallowed = 0
    table = Handlers()

    @table.task
    async def stubborn(ctx: Context) -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1  # the first cancel is lost, as in the wait_for race
                asyncio.current_task().uncancel()  # type: ignore[union-attr]

    ctx = Context(bus=None, subjects=None, store=None, config=None, catalogue=Catalogue(),  # type: ignore[arg-type]
                  swarm=None)  # type: ignore[arg-type]
    runtime = Runtime(ctx, [table])
    await runtime.__aenter__()
    await asyncio.sleep(0)  # the task runs
    async with asyncio.timeout(5):  # before: the runtime waited for it forever
        await runtime.__aexit__(None, None, None)
    assert swallowed == 1
