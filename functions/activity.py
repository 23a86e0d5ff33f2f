"""activity: gateway heartbeats -> the instance record (last traffic, open connections)."""

from __future__ import annotations

import logging

from swarmpool.bus.messages import Activity
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions.policy import MAX_CLOCK_SKEW, apply_activity
from swarmpool.ids import short_id

log = logging.getLogger(__name__)
handlers = Handlers()


@handlers.on(lambda s: s.activity_all(), Activity, expect=lambda s, hb: s.activity(hb.app, hb.id))
async def heartbeat(ctx: Context, hb: Activity) -> None:
    now = ctx.clock()
    if not hb.at <= now + MAX_CLOCK_SKEW:
        # apply_activity refuses it too; said here once, so a forger or a clock gone wrong shows
        log.warning("heartbeat for %s from gateway %r refused: dated %.0f s ahead", short_id(hb.app, hb.id),
                    hb.gateway[:40], hb.at - now)
        return
    await ctx.store.update(hb.app, hb.id, lambda r: apply_activity(r, hb, now))
