"""keeper: keeps ready + starting at each app's target; reconciles swarm services with records."""

from __future__ import annotations

import asyncio
import logging

from swarmpool.bus.messages import InstanceEvent, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions import lifecycle
from swarmpool.functions.policy import (
    backoff_delay,
    ghost_records,
    leaked_services,
    starts_needed,
    surplus_ready,
    target,
)

log = logging.getLogger(__name__)
handlers = Handlers()


async def top_up(ctx: Context, app: str) -> int:
    """Start as many instances of `app` as its pool needs now; returns how many."""
    spec = ctx.app(app)
    if spec is None:
        return 0
    async with ctx.lock(f"top-up.{app}"):
        now = ctx.clock()
        if now < ctx.hold_starts_until.get(app, 0.0):
            return 0
        override = ctx.config.cached(app)
        want = target(spec, override)
        n = starts_needed(
            records=ctx.store.all(app), target=want, limit=max(spec.pool.limit, want),
            max_parallel=spec.pool.max_parallel_starts,
            global_free=ctx.settings.max_instances - len(ctx.store.all()),
        )
        failures = ctx.failures.get(app, 0)
        delay = backoff_delay(failures)
        if n and delay:
            ctx.hold_starts_until[app] = now + delay
            log.warning("%s: %d failed starts in a row; next start in %.0f s", app, failures, delay)
        # records are written under the lock: the next top-up counts them
        reserved = [await lifecycle.reserve(ctx, spec) for _ in range(n)]
        # paused keeps its warm pool (drain retires it); otherwise scale down to the target
        surplus = [] if override.paused else surplus_ready(ctx.store.all(app), want)
    for record in surplus:
        await lifecycle.retire(ctx, app, record.id, f"surplus: more than {want} ready")
    starts = [asyncio.create_task(lifecycle.start(ctx, spec, record)) for record in reserved]
    if starts:
        results = await asyncio.gather(*starts, return_exceptions=True)
        for err in results:
            if isinstance(err, Exception):
                log.warning("%s: start failed: %s", app, err)
    return n


@handlers.on(lambda s: s.instance_events_all(), InstanceEvent)
async def on_instance_event(ctx: Context, event: InstanceEvent, subject: str) -> None:
    """Refill at once when an instance leaves the warm pool; learn from failures and successes."""
    if event.event == "ready":
        ctx.failures[event.app] = 0
    if event.event in ("claimed", "failed", "removed", "retiring"):
        await top_up_soon(ctx, event.app)


async def top_up_soon(ctx: Context, app: str) -> None:
    """Coalesce a burst of events into one top-up a moment later, so that the clicks of a class
    are answered before Docker work (service creation) competes with them for the CPU."""
    if app in ctx.refill_pending:
        return
    ctx.refill_pending.add(app)
    try:
        await asyncio.sleep(float(ctx.settings.refill_delay))
    finally:
        ctx.refill_pending.discard(app)
    await top_up(ctx, app)


@handlers.on(lambda s: s.tick("reconcile"), Tick, concurrency=1, skip_when_busy=True)
async def reconcile(ctx: Context, tick: Tick, subject: str) -> None:
    """Compare swarm services with records: remove leaks, retire ghosts, top every pool up."""
    records = ctx.store.all()  # before listing: a ghost must have been a record already then
    services = await ctx.swarm.list_ours()
    now = ctx.clock()
    grace = float(ctx.settings.orphan_grace)
    by_key = {f"{s.app}.{s.id}": s for s in services}
    # after listing: a record written meanwhile is not a leak
    for key in leaked_services({k: s.created_at for k, s in by_key.items()},
                               {r.key for r in ctx.store.all()}, now, grace):
        log.warning("removing leaked service %s (no record)", key[: key.index(".") + 5])
        await ctx.swarm.remove(by_key[key].service_id)
    for ghost in ghost_records(records, {s.service_id for s in services}, now, grace):
        await lifecycle.fail(ctx, ghost.app, ghost.id, "service vanished")
    for app in ctx.catalogue.apps:
        await top_up(ctx, app)
