"""clock: the singleton that publishes ticks (fast: reaper and prober; reconcile: keeper)."""

from __future__ import annotations

import asyncio

from swarmpool.bus.messages import Period, Tick
from swarmpool.bus.runtime import Context, Handlers

handlers = Handlers()


@handlers.singleton("clock")
async def tick(ctx: Context) -> None:
    """Publish a fast tick every tick_interval and a reconcile tick every reconcile_interval (both read again
    each round, so `admin reload` changes them)."""
    loop = asyncio.get_running_loop()
    seq = 0
    next_slow = loop.time()  # reconcile at once on start
    while True:
        fast, slow = float(ctx.settings.tick_interval), float(ctx.settings.reconcile_interval)
        next_slow = min(next_slow, loop.time() + slow)  # a shorter interval than before counts at once
        seq += 1
        await ctx.publish(ctx.subjects.tick(Period.FAST), Tick(period=Period.FAST, at=ctx.clock(), seq=seq))
        if loop.time() >= next_slow:
            await ctx.publish(ctx.subjects.tick(Period.RECONCILE),
                              Tick(period=Period.RECONCILE, at=ctx.clock(), seq=seq))
            next_slow = loop.time() + slow
        await asyncio.sleep(fast)
