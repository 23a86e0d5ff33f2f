"""keeper: keeps ready + starting at each app's target; reconciles swarm services with records."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec

from swarmpool.bus.messages import EventKind, Instance, InstanceEvent, Period, PoolOverride, Settled, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Mutex
from swarmpool.functions import lifecycle
from swarmpool.bus.spec import AppSpec
from swarmpool.functions.policy import (budgeted_starts, counts, dead_instances, engine_fault, engine_starts,
                                        failed_start, ghost_records, leaked_services, lost_node_instances, placed_nodes,
                                        plan_recycle, plan_top_up, spec_version, start_budget, target,
                                        unsettled_claims)
from swarmpool.ids import short_id

log = logging.getLogger(__name__)


@dataclass
class KeeperState:
    """What one host's keeper remembers between events (the pool itself lives in KV)."""

    failures: dict[str, int] = field(default_factory=dict)  # app -> consecutive failed starts
    hold_starts_until: dict[str, float] = field(default_factory=dict)  # app -> end of the backoff
    refill_pending: set[str] = field(default_factory=set)  # apps with a coalesced top-up on its way
    settle_pending: set[str] = field(default_factory=set)  # apps whose claims' refills wait for a settle
    budget: int = 0  # the start budget this host last used (logged when it changes)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # this host's top-ups wait here, not on the bus
    mutex: Mutex | None = None  # ... and all hosts' on this one (see `counting`)
    image_ids: dict[str, str] = field(default_factory=dict)  # image name -> its id at the last reconcile


handlers = Handlers(state=KeeperState)

MUTEX = "keeper-top-up"


@asynccontextmanager
async def counting(ctx: Context) -> AsyncIterator[None]:
    """One top-up at a time across all hosts, each seeing every record written before it.

    A top-up counts records, then writes the ones it starts; two hosts (or two apps, which share
    `max_instances` and the start budget) counting at once would both start the same missing
    instances and overshoot `max`. So top-ups take a mutex on the bus, then wait for this host's
    mirror to hold every write made before (the last holder's reservations included)."""
    state = ctx.state(KeeperState)
    async with state.lock:
        if state.mutex is None:
            state.mutex = await ctx.mutex(MUTEX)
        async with state.mutex.held():
            await ctx.store.caught_up()
            yield


async def top_up(ctx: Context, app: str) -> int:
    """Start as many instances of `app` as its pool needs now; returns how many."""
    spec = ctx.app(app)
    if spec is None:
        return 0
    state = ctx.state(KeeperState)
    node_cores = await ctx.swarm.node_cores()  # the swarm's nodes listing, at most a minute old (not under the mutex)
    async with counting(ctx):
        failures = state.failures.get(app, 0)
        override = ctx.config.cached(app)
        current = ctx.store.all(app)
        if not override.paused:  # after a reload: outdated warm instances make room for current ones
            current = await _recycle(ctx, spec, current, override)
        plan = plan_top_up(spec=spec, override=override, records=current,
                           total=len(ctx.store.all()), max_instances=ctx.settings.max_instances,
                           failures=failures, hold_until=state.hold_starts_until.get(app, 0.0),
                           now=ctx.clock(), timezone=ctx.settings.timezone)
        if plan.hold_until is not None:
            state.hold_starts_until[app] = plan.hold_until
            log.warning("%s: %d failed starts in a row; next start in %.0f s", app, failures,
                        plan.hold_until - ctx.clock())
        records = ctx.store.all()
        deferred = len(unsettled_claims(current, ctx.clock(), float(ctx.settings.settle_cap)))
        settings = ctx.settings
        budget = start_budget(records, ctx.clock(), cores=os.cpu_count() or 1, ceiling=settings.start_budget_max,
                              tolerance=settings.start_tolerance, settle_cap=float(settings.settle_cap),
                              short=plan.starts > 0, fixed=settings.start_budget,
                              timeouts={a.name: float(a.probe.timeout) for a in ctx.catalogue.apps.values()},
                              node_cores=node_cores)
        if budget.size != state.budget:
            log.info("start budget %d (%s)", budget.size, budget.why)
            state.budget = budget.size
        starts = budgeted_starts(plan.starts, deferred, budget.size, sum(r.state == "starting" for r in records))
        if starts < plan.starts - deferred:
            log.debug("%s: %d of %d starts wait for the engine's start budget (%d)", app,
                      plan.starts - deferred - starts, plan.starts - deferred, budget.size)
        # records are written while counting: the next top-up, on any host, counts them
        reserved = [await lifecycle.reserve(ctx, spec) for _ in range(starts)]
        surplus = [await lifecycle.begin_retire(ctx, app, record.id, f"surplus: more than {plan.target} ready")
                   for record in plan.surplus]
    await ctx.each("retire surplus", (lifecycle.remove(ctx, record) for record in surplus if record is not None))
    await ctx.each("start", (lifecycle.start(ctx, spec, record) for record in reserved))
    return starts


async def _recycle(ctx: Context, spec: AppSpec, records: list[Instance], override: PoolOverride) -> list[Instance]:
    """Retire the outdated warm instances the plan allows now (while `counting`, so two top-ups
    never both count the same current ones); the records that count for the pool (current ones)."""
    version = spec_version(spec)
    image_id = ctx.state(KeeperState).image_ids.get(spec.image, "")
    want = target(spec, override, ctx.clock(), ctx.settings.timezone).size
    old, now = plan_recycle(records, version, image_id, want)
    for record in now:
        why = ("the catalogue changed its spec" if record.spec and record.spec != version
               else "the catalogue changed its image" if record.handle else "its service is named after its id")
        await ctx.isolated("recycle", lifecycle.retire(ctx, record.app, record.id, f"recycled: {why}"))
    stale = {r.id for r in old}
    return [r for r in records if r.id not in stale]


@handlers.on(lambda s: s.instance_events_all(), InstanceEvent,
             expect=lambda s, e: s.instance_event(e.app, e.id, e.event))
async def on_instance_event(ctx: Context, event: InstanceEvent) -> None:
    """Refill at once when an instance leaves the warm pool; learn from failures and successes."""
    failures = ctx.state(KeeperState).failures
    if event.event == EventKind.READY:
        failures[event.app] = 0
    elif event.event == EventKind.FAILED and failed_start(event.reason):
        failures[event.app] = failures.get(event.app, 0) + 1
    if event.event == EventKind.CLAIMED:
        await refill_after_settle(ctx, event.app)
    elif engine_fault(event.reason):
        pass  # the engine failed it: the next reconcile tops up (no start loop while it is away)
    elif event.event in (EventKind.FAILED, EventKind.REMOVED, EventKind.RETIRING):
        await top_up_soon(ctx, event.app)
    if event.event in (EventKind.READY, EventKind.FAILED, EventKind.REMOVED) and not engine_fault(event.reason):
        await top_up_short(ctx)  # a start is over: the next begins (not while the engine is away)


def short_apps(ctx: Context) -> list[str]:
    """Apps whose ready + starting instances are below their target (by the records every host sees)."""
    short = []
    for name, spec in ctx.catalogue.apps.items():
        c = counts(ctx.store.all(name))
        if c["ready"] + c["starting"] < target(spec, ctx.config.cached(name), ctx.clock(),
                                               ctx.settings.timezone).size:
            short.append(name)
    return short


async def top_up_short(ctx: Context) -> None:
    """Top up every short app at once: a start that ended (or a page that settled) frees the budget now,
    not at the next tick."""
    for app in short_apps(ctx):
        await ctx.isolated(f"top up {app}", top_up(ctx, app))


@handlers.on(lambda s: s.settled_all(), Settled, expect=lambda s, m: s.settled(m.app, m.id))
async def on_settled(ctx: Context, message: Settled) -> None:
    """A student's page has loaded: their instance's replacement may start now."""
    if ctx.app(message.app) is None:
        return
    await ctx.store.update(message.app, message.id, lambda r: msgspec.structs.replace(r, settled_at=message.at)
                           if r.state == "claimed" and r.settled_at is None else None)
    await top_up(ctx, message.app)
    await top_up_short(ctx)  # a page less settling: the budget widens for every app


async def _record_placement(ctx: Context, key: str, node: str | None, task_start: float | None) -> None:
    """Write the node an instance's task runs on and the engine's time to start it, whichever is new."""
    app, instance_id = key.split(".", 1)

    def placed(r: Instance) -> Instance | None:
        if r.state not in ("starting", "ready", "claimed"):
            return None
        new_node = node if node and r.node != node else r.node
        new_start = task_start if task_start is not None and r.task_start is None else r.task_start
        if (new_node, new_start) == (r.node, r.task_start):
            return None
        return msgspec.structs.replace(r, node=new_node, task_start=new_start)

    await ctx.store.update(app, instance_id, placed)


async def _learn_image(ctx: Context, image: str) -> None:
    image_id = await ctx.swarm.resolve_image(image)
    if image_id:
        ctx.state(KeeperState).image_ids[image] = image_id


async def refill_after_settle(ctx: Context, app: str) -> None:
    """Refill a burst of claims as their pages load (`on_settled`), and for those that never say so,
    when `settle_cap` has passed: one coalesced loop per app."""
    state = ctx.state(KeeperState)
    if app in state.settle_pending:
        return
    state.settle_pending.add(app)
    try:
        cap = float(ctx.settings.settle_cap)
        await asyncio.sleep(float(ctx.settings.refill_delay))  # the rest of a burst's clicks first
        while True:
            await top_up(ctx, app)
            waiting = unsettled_claims(ctx.store.all(app), ctx.clock(), cap)
            if not waiting:
                return
            due = min(r.claimed_at or 0.0 for r in waiting) + cap
            await asyncio.sleep(max(due - ctx.clock(), 0.05))
    finally:
        state.settle_pending.discard(app)


async def top_up_soon(ctx: Context, app: str) -> None:
    """Coalesce a burst of events into one top-up a moment later, so that the clicks of a class
    are answered before Docker work (service creation) competes with them for the CPU."""
    pending = ctx.state(KeeperState).refill_pending
    if app in pending:
        return
    pending.add(app)
    try:
        await asyncio.sleep(float(ctx.settings.refill_delay))
    finally:
        pending.discard(app)
    await top_up(ctx, app)


@handlers.on(lambda s: s.tick(Period.RECONCILE), Tick, concurrency=1, skip_when_busy=True)
async def reconcile(ctx: Context, tick: Tick) -> None:
    """One reconcile pass, timed (`swarmpool_reconcile_seconds`: it must stay well under the period)."""
    started = time.perf_counter()
    try:
        await reconcile_pass(ctx)
    finally:
        ctx.metrics.reconcile_seconds.observe(time.perf_counter() - started)


async def reconcile_pass(ctx: Context) -> None:
    """Compare swarm services and their tasks with records: remove leaks, retire ghosts, fail the
    dead (warm ones are replaced, claimed ones end), top every pool up; then claims may trust the
    pool again if the engine was out of sight. Each item is isolated: one that fails is logged
    and counted, the others go on."""
    gap = ctx.config.trust().gap  # the pass covers gaps opened before it lists anything
    records = ctx.store.all()  # before listing: a ghost must have been a record already then
    # the listings at once (each costs the engine a walk over all it holds: hundreds of services), and the images'
    # ids (a tag moved to another image recycles its instances at the top-ups below)
    services, tasks, nodes, _ = await asyncio.gather(
        ctx.swarm.list_ours(), ctx.swarm.task_states(), ctx.swarm.nodes(),
        ctx.each("image of an app", (_learn_image(ctx, spec.image) for spec in list(ctx.catalogue.apps.values()))))
    now = ctx.clock()
    grace = float(ctx.settings.orphan_grace)
    by_key = {f"{s.app}.{s.id}": s for s in services}
    # after listing: a record written meanwhile is not a leak
    for key in leaked_services({k: s.created_at for k, s in by_key.items()},
                               {r.key for r in ctx.store.all()}, now, grace):
        leak = by_key[key]
        log.warning("removing leaked service %s (no record)", short_id(leak.app, leak.id))
        await ctx.isolated("remove leaked service", ctx.swarm.remove(leak.service_id))
    for ghost in ghost_records(records, {s.service_id for s in services}, now, grace):
        await ctx.isolated("fail ghost record", lifecycle.fail(ctx, ghost.app, ghost.id, "service vanished"))
    dead = dead_instances(records, {k: t.state for k, t in tasks.items()})
    task_nodes = {k: t.node for k, t in tasks.items()}
    dead_keys = {r.key for r, _ in dead}
    dead += [(r, why) for r, why in lost_node_instances(records, task_nodes, nodes) if r.key not in dead_keys]
    await ctx.each("fail dead instance", (lifecycle.fail(ctx, r.app, r.id, reason) for r, reason in dead))
    dead_keys = {r.key for r, _ in dead}
    nodes_new = placed_nodes(records, task_nodes)
    starts_new = engine_starts(records, {k: (t.created_at, t.running_at) for k, t in tasks.items()})
    await ctx.each("record placement", (_record_placement(ctx, key, nodes_new.get(key), starts_new.get(key))
                                        for key in sorted(nodes_new.keys() | starts_new.keys())
                                        if key not in dead_keys))
    await ctx.config.mark_reconciled(gap)
    for app in ctx.catalogue.apps:
        await ctx.isolated(f"top up {app}", top_up(ctx, app))
