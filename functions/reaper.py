"""reaper: retires idle, disconnected, expired, failed and stale-warm instances on every tick."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any

from swarmpool.bus.messages import Instance, Period, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions import lifecycle
from swarmpool.functions.policy import retire_reason
from swarmpool.functions.prober import is_probing

log = logging.getLogger(__name__)
handlers = Handlers()

STUCK_RETIRING = 30.0  # a retiring record this old lost its retirer (crash): finish the job


@handlers.on(lambda s: s.tick(Period.FAST), Tick, concurrency=1, skip_when_busy=True)
async def sweep(ctx: Context, tick: Tick) -> None:
    now = ctx.clock()
    jobs: list[Awaitable[Any]] = []
    for r in ctx.store.all():
        if r.state == "retiring":
            if now - (r.retiring_at or r.created_at) > STUCK_RETIRING:
                jobs.append(_finish(ctx, r))
            continue
        if r.state == "starting" and is_probing(ctx, r.key):
            continue  # the prober owns its timeout
        reason = retire_reason(r, ctx.app(r.app), now)
        if reason is not None:
            jobs.append(lifecycle.retire(ctx, r.app, r.id, reason))
    await ctx.each("retire", jobs)


async def _finish(ctx: Context, record: Instance) -> None:
    """Complete a retirement whose retirer died between the CAS and the removal."""
    log.info("finishing retirement of %s (%s)", record.short, record.reason)
    await lifecycle.remove(ctx, record)
