"""prober: an instance becomes ready only when its probe passes (HTTP and/or log marker)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from swarmpool.bus.messages import EventKind, Instance, InstanceEvent, Period, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.spec import AppSpec
from swarmpool.functions import lifecycle
from swarmpool.ids import instance_prefix
from swarmpool.swarm.port import SwarmPort
from swarmpool.swarm.tasks import ENDED_TASK_STATES, MISSING

log = logging.getLogger(__name__)

DEAD = ENDED_TASK_STATES | {MISSING}


@dataclass
class ProberState:
    probing: set[str] = field(default_factory=set)  # instance keys this host is probing


handlers = Handlers(state=ProberState)


@dataclass(frozen=True)
class Verdict:
    """The outcome of one probe."""

    result: Literal["ready", "wait", "dead"]
    detail: str = ""
    endpoint: str = ""  # where the task answers, once it runs
    node: str = ""  # the swarm node its task runs on (the start budget is followed per node)


def is_probing(ctx: Context, key: str) -> bool:
    """Whether this host is probing that instance (it then owns its start timeout)."""
    return key in ctx.state(ProberState).probing


async def probe_until_ready(ctx: Context, app: str, instance_id: str) -> None:
    """Poll one starting instance until it is ready, has failed, or is no longer ours."""
    spec = ctx.app(app)
    key = f"{app}.{instance_id}"
    probing = ctx.state(ProberState).probing
    if spec is None or key in probing:
        return
    probing.add(key)
    try:
        while True:
            current = ctx.store.get(app, instance_id)
            if current is None or current.instance.state != "starting":
                return
            record = current.instance
            if ctx.clock() - record.created_at > spec.probe.timeout:
                await lifecycle.fail(ctx, app, instance_id, f"not ready within {spec.probe.timeout:.0f} s")
                return
            if record.service_id:
                verdict = await check(ctx.swarm, spec, record)
                if verdict.endpoint and verdict.endpoint != record.endpoint:
                    await ctx.store.update(app, instance_id, lambda r: msgspec.structs.replace(
                        r, endpoint=verdict.endpoint) if r.state == "starting" else None)
                if verdict.result == "ready":
                    await mark_ready(ctx, app, instance_id, verdict.node)
                    return
                if verdict.result == "dead":
                    await lifecycle.fail(ctx, app, instance_id, verdict.detail)
                    return
            await asyncio.sleep(spec.probe.interval)
    finally:
        probing.discard(key)


async def check(swarm: SwarmPort, spec: AppSpec, record: Instance) -> Verdict:
    """One probe of a started instance: its task must run, then every configured check must pass."""
    status = await swarm.status(record.service_id)
    if status.state in DEAD:
        detail = f" (exit {status.exit_code})" if status.exit_code is not None else ""
        return Verdict("dead", f"dead: container {status.state}{detail} {status.error}".rstrip())
    if status.state != "running" or not status.endpoint:
        return Verdict("wait", f"task {status.state}")
    if spec.probe.path is not None:
        root = "/" if spec.strip_prefix else instance_prefix(record.id)
        if not await swarm.probe_http(status.endpoint, root + spec.probe.path.lstrip("/")):
            return Verdict("wait", "http probe", status.endpoint)
    if spec.probe.log_marker and not await swarm.logs_contain(record.service_id, spec.probe.log_marker):
        return Verdict("wait", "log marker", status.endpoint)
    return Verdict("ready", "", status.endpoint, status.node)


async def mark_ready(ctx: Context, app: str, instance_id: str, node: str = "") -> None:
    now = ctx.clock()
    result = await ctx.store.update(app, instance_id, lambda r: msgspec.structs.replace(
        r, state="ready", ready_at=now, node=node or r.node) if r.state == "starting" else None)
    if result is not None and result.instance.state == "ready":
        log.info("ready %s after %.1f s", result.instance.short, now - result.instance.created_at)


@handlers.on(lambda s: s.instance_events_all(), InstanceEvent, queue=False,
             expect=lambda s, e: s.instance_event(e.app, e.id, e.event))
async def on_created(ctx: Context, event: InstanceEvent) -> None:
    """Start probing as soon as a keeper writes a new record."""
    if event.event == EventKind.CREATED and ctx.store.get(event.app, event.id) is not None:
        await probe_until_ready(ctx, event.app, event.id)


@handlers.on(lambda s: s.tick(Period.FAST), Tick, queue=False)
async def sweep(ctx: Context, tick: Tick) -> None:
    """Backstop: probe starting instances nobody here probes (e.g. after a restart)."""
    probing = ctx.state(ProberState).probing
    waiting = [r for r in ctx.store.all() if r.state == "starting" and r.key not in probing]
    await ctx.each("probe", (probe_until_ready(ctx, r.app, r.id) for r in waiting))
