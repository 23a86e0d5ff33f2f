"""Shared steps of an instance's life that several handlers take: start, fail, retire."""

from __future__ import annotations

import logging
from collections.abc import Callable

import msgspec

from swarmpool.bus.messages import Instance
from swarmpool.bus.runtime import Context
from swarmpool.bus.spec import AppSpec, Settings
from swarmpool.bus.state import Conflict, InvalidTransition
from swarmpool.functions.policy import spec_version
from swarmpool.ids import instance_prefix, new_handle, new_instance_id, short_id
from swarmpool.swarm.model import ENGINE_FAULT, InstanceSpec, SwarmUnavailable

log = logging.getLogger(__name__)


def instance_spec(spec: AppSpec, instance_id: str, settings: Settings, handle: str = "") -> InstanceSpec:
    """What Docker must run for one instance of `spec` (its service named by `handle`, never by its id)."""
    prefix = instance_prefix(instance_id)
    command = [part.replace("{prefix}", prefix) for part in spec.command] if spec.command else None
    env = {**spec.env, "SWARMPOOL_PREFIX": prefix}
    if spec.prefix_env:
        env[spec.prefix_env] = prefix
    return InstanceSpec(
        app=spec.name, id=instance_id, handle=handle, image=spec.image, port=spec.port, command=command, env=env,
        cpus=spec.limits.cpus, memory=int(spec.limits.memory), pids=spec.limits.pids,
        user=spec.user, trusted_user="user" in spec.trusted, cap_add=list(spec.cap_add),
        constraints=list(spec.constraints), publish=settings.publish_ports,
        network=settings.network, egress=spec.egress, dns=list(settings.egress_dns), guard=settings.guard,
    )


async def reserve(ctx: Context, spec: AppSpec) -> Instance:
    """Write a `starting` record, so the new instance counts at once, here and on every host."""
    record = Instance(id=new_instance_id(), handle=new_handle(), app=spec.name, state="starting",
                      created_at=ctx.clock(), spec=spec_version(spec))
    await ctx.store.create(record)
    return record


async def start(ctx: Context, spec: AppSpec, record: Instance) -> None:
    """Create the service of a reserved record (the keeper's start budget bounds how many start at once)."""
    try:
        service_id = await ctx.swarm.create(instance_spec(spec, record.id, ctx.settings, record.handle))
    except Exception as err:
        log.warning("could not start %s: %s", record.short, err)
        fault = f"{ENGINE_FAULT}: " if isinstance(err, SwarmUnavailable) and ENGINE_FAULT not in str(err) else ""
        await fail(ctx, record.app, record.id, f"service not created: {fault}{err}")
        return
    image = ctx.swarm.image_id(spec.image)
    updated = await ctx.store.update(
        record.app, record.id,
        lambda r: msgspec.structs.replace(r, service_id=service_id, image=image) if r.state == "starting" else None,
    )
    if updated is None or updated.instance.service_id != service_id:
        # retired while Docker was creating it: do not leak the service
        await ctx.swarm.remove(service_id)
    else:
        log.info("starting %s", record.short)


async def fail(ctx: Context, app: str, instance_id: str, reason: str) -> None:
    """starting/ready -> failed; a claimed instance goes straight to retiring (session ended)."""

    record = await _transition(ctx, app, instance_id, lambda r: failed(r, reason, ctx.clock()), "mark failed")
    if record is None:
        return
    if record.state == "failed":
        log.warning("%s failed: %s", record.short, reason)
    await retire(ctx, app, instance_id, reason)


async def retire(ctx: Context, app: str, instance_id: str, reason: str) -> None:
    """Mark retiring (CAS), remove the service, delete the record. Safe to repeat after a crash."""
    record = await begin_retire(ctx, app, instance_id, reason)
    if record is not None:
        await remove(ctx, record)


async def begin_retire(ctx: Context, app: str, instance_id: str, reason: str) -> Instance | None:
    """Mark retiring (CAS): from here the instance counts as gone. None if it was not there."""
    record = await _transition(ctx, app, instance_id, lambda r: retiring(r, reason, ctx.clock()), "retire")
    if record is not None and record.reason == reason:
        log.info("retiring %s (%s)", record.short, reason)
    return record


async def remove(ctx: Context, record: Instance) -> None:
    """The end of a retirement: the service goes, then the record."""
    if record.service_id:
        await ctx.swarm.remove(record.service_id)
    await ctx.store.delete(record, record.reason)


def failed(r: Instance, reason: str, now: float) -> Instance | None:
    """The record of an instance that failed: warm ones fail (and are replaced), a claimed one's
    session ends; None when it is already on its way out."""
    if r.state in ("starting", "ready"):
        return msgspec.structs.replace(r, state="failed", reason=reason)
    if r.state == "claimed":
        return msgspec.structs.replace(r, state="retiring", reason=reason, retiring_at=now)
    return None


def retiring(r: Instance, reason: str, now: float) -> Instance | None:
    """The record of an instance being retired; None when it already is."""
    if r.state == "retiring":
        return None
    return msgspec.structs.replace(r, state="retiring", reason=reason, retiring_at=now)


async def _transition(ctx: Context, app: str, instance_id: str, change: Callable[[Instance], Instance | None],
                      what: str) -> Instance | None:
    """Apply `change` by CAS; the record as it is afterwards, or None if it is gone or could not change."""
    try:
        result = await ctx.store.update(app, instance_id, change)
    except (Conflict, InvalidTransition) as err:
        log.warning("could not %s %s: %s", what, short_id(app, instance_id), err)
        return None
    return None if result is None else result.instance
