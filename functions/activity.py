"""activity: gateway heartbeats -> the instance record (last traffic, open connections)."""

from __future__ import annotations

from swarmpool.bus.messages import Activity
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions.policy import apply_activity

handlers = Handlers()


@handlers.on(lambda s: s.activity_all(), Activity, expect=lambda s, hb: s.activity(hb.app, hb.id))
async def heartbeat(ctx: Context, hb: Activity) -> None:
    await ctx.store.update(hb.app, hb.id, lambda r: apply_activity(r, hb, ctx.clock()))
