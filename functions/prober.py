"""prober: an instance becomes ready only when its probe passes (HTTP and/or log marker)."""

from __future__ import annotations

import asyncio
import logging

import msgspec

from swarmpool.bus.messages import Instance, InstanceEvent, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions import lifecycle

log = logging.getLogger(__name__)
handlers = Handlers()

DEAD = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove", "missing"}


async def probe_until_ready(ctx: Context, app: str, instance_id: str) -> None:
    """Poll one starting instance until it is ready, has failed, or is no longer ours."""
    spec = ctx.app(app)
    key = f"{app}.{instance_id}"
    if spec is None or key in ctx.probing:
        return
    ctx.probing.add(key)
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
                verdict = await check(ctx, record)
                if verdict == "ready":
                    await mark_ready(ctx, app, instance_id)
                    return
                if verdict.startswith("dead"):
                    await lifecycle.fail(ctx, app, instance_id, verdict)
                    return
            await asyncio.sleep(spec.probe.interval)
    finally:
        ctx.probing.discard(key)


async def check(ctx: Context, record: Instance) -> str:
    """One probe: 'ready', 'wait', or 'dead: <why>'."""
    spec = ctx.app(record.app)
    assert spec is not None
    status = await ctx.swarm.status(record.service_id)
    if status.state in DEAD:
        detail = f" (exit {status.exit_code})" if status.exit_code is not None else ""
        return f"dead: container {status.state}{detail} {status.error}".rstrip()
    if status.state != "running" or not status.endpoint:
        return "wait"
    if status.endpoint != record.endpoint:
        await ctx.store.update(record.app, record.id, lambda r: msgspec.structs.replace(
            r, endpoint=status.endpoint) if r.state == "starting" else None)
    if spec.probe.path is not None:
        root = "/" if spec.strip_prefix else f"/i/{record.id}/"
        if not await ctx.swarm.probe_http(status.endpoint, root + spec.probe.path.lstrip("/")):
            return "wait"
    if spec.probe.log_marker and not await ctx.swarm.logs_contain(record.service_id, spec.probe.log_marker):
        return "wait"
    return "ready"


async def mark_ready(ctx: Context, app: str, instance_id: str) -> None:
    now = ctx.clock()
    result = await ctx.store.update(app, instance_id, lambda r: msgspec.structs.replace(
        r, state="ready", ready_at=now) if r.state == "starting" else None)
    if result is not None and result.instance.state == "ready":
        log.info("ready %s after %.1f s", result.instance.short, now - result.instance.created_at)


@handlers.on(lambda s: s.instance_events_all(), InstanceEvent, queue=False)
async def on_created(ctx: Context, event: InstanceEvent, subject: str) -> None:
    """Start probing as soon as a keeper on this host writes a new record."""
    if event.event == "created" and ctx.store.get(event.app, event.id) is not None:
        await probe_until_ready(ctx, event.app, event.id)


@handlers.on(lambda s: s.tick("fast"), Tick, queue=False)
async def sweep(ctx: Context, tick: Tick, subject: str) -> None:
    """Backstop: probe starting instances nobody here probes (e.g. after a restart)."""
    waiting = [r for r in ctx.store.all() if r.state == "starting" and r.key not in ctx.probing]
    await asyncio.gather(*(probe_until_ready(ctx, r.app, r.id) for r in waiting))
