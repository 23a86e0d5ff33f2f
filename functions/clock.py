"""clock: the singleton that publishes ticks (fast: reaper and prober; reconcile: keeper)."""

from __future__ import annotations

import asyncio
import logging

from swarmpool.bus.messages import Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Lease

log = logging.getLogger(__name__)
handlers = Handlers()


async def tick(ctx: Context) -> None:
    lease = await Lease.open(ctx.nc, ctx.subjects, "clock", ctx.host)
    loop = asyncio.get_running_loop()
    fast, slow = float(ctx.settings.tick_interval), float(ctx.settings.reconcile_interval)
    seq = 0
    next_slow = loop.time()  # reconcile at once on start
    renew_at = 0.0
    try:
        while True:
            now = loop.time()
            if now >= renew_at:
                held = await lease.acquire_or_renew()
                renew_at = now + 3
                if not held:
                    await asyncio.sleep(3)
                    continue
            seq += 1
            await ctx.publish(ctx.subjects.tick("fast"), Tick(period="fast", at=ctx.clock(), seq=seq))
            if now >= next_slow:
                await ctx.publish(ctx.subjects.tick("reconcile"), Tick(period="reconcile", at=ctx.clock(), seq=seq))
                next_slow = now + slow
            await asyncio.sleep(fast)
    finally:
        await lease.release()


handlers.task(tick)
