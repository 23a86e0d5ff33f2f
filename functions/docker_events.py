"""docker_events: follows the engine (singleton, by lease) and turns dead containers into failures."""

from __future__ import annotations

import asyncio
import logging

from swarmpool.bus.messages import DockerEvent, Period, Tick
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions import lifecycle

log = logging.getLogger(__name__)
handlers = Handlers()

DEATHS = {"die", "oom", "kill"}
REPLAY_MARGIN = 5.0  # seconds of engine events replayed on each (re)connect (host and engine clocks may differ a little)


@handlers.on(lambda s: s.docker_all(), DockerEvent, expect=lambda s, e: s.docker(e.type, e.action))
async def on_docker_event(ctx: Context, event: DockerEvent) -> None:
    """A container of ours died: starting/ready -> failed (replaced), claimed -> session ended."""
    if event.action not in DEATHS or not event.id:
        return
    current = ctx.store.get(event.app, event.id)
    if current is None or current.instance.state in ("retiring", "failed"):
        return
    await lifecycle.fail(ctx, event.app, event.id, death_reason(event))


def death_reason(event: DockerEvent) -> str:
    if event.action == "oom":
        return "out of memory"
    if event.exit_code is not None:
        return f"container exited with {event.exit_code}"
    return f"container {event.action}"


@handlers.singleton("swarm-watcher")
async def follow_engine(ctx: Context) -> None:
    """Publish Docker events of our containers on the bus (one host at a time).

    The engine keeps few events and none across its own restart, and events published while no
    handler listened are lost: every (re)connect and every break of the stream is a gap, after
    which claims wait for a full reconcile pass (asked for at once) before trusting the pool.
    The stream replays from a little before the gap, so nothing between the two is missed."""
    since = ctx.clock() - REPLAY_MARGIN
    try:
        await ctx.config.mark_gap("following the engine's events again")
        await ctx.publish(ctx.subjects.tick(Period.RECONCILE), Tick(period=Period.RECONCILE, at=ctx.clock()))
        async for e in ctx.swarm.events(since=since):  # a cancelled wait inside closes the stream
            action = e.action.split(":")[0]  # "kill: signal 9" and the like
            await ctx.publish(ctx.subjects.docker(e.type, action), DockerEvent(
                type=e.type, action=action, at=e.at, app=e.app, id=e.id,
                service_id=e.service_id, container_id=e.container_id, exit_code=e.exit_code))
        raise ConnectionError("the engine's event stream ended")  # the runtime follows it again
    except asyncio.CancelledError:
        raise
    except Exception as err:
        await ctx.config.mark_gap(f"the engine's event stream broke: {type(err).__name__}")
        raise
