"""docker_events: follows the engine (singleton, by lease) and turns dead containers into failures."""

from __future__ import annotations

import asyncio
import logging

from swarmpool.bus.messages import DockerEvent
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Lease
from swarmpool.functions import lifecycle

log = logging.getLogger(__name__)
handlers = Handlers()

DEATHS = {"die", "oom", "kill"}


@handlers.on(lambda s: s.docker_all(), DockerEvent)
async def on_docker_event(ctx: Context, event: DockerEvent, subject: str) -> None:
    """A container of ours died: starting/ready -> failed (replaced), claimed -> session ended."""
    if event.action not in DEATHS or not event.id:
        return
    current = ctx.store.get(event.app, event.id)
    if current is None or current.instance.state in ("retiring", "failed"):
        return
    if event.action == "oom":
        reason = "out of memory"
    elif event.exit_code is not None:
        reason = f"container exited with {event.exit_code}"
    else:
        reason = f"container {event.action}"
    await lifecycle.fail(ctx, event.app, event.id, reason)


async def follow_engine(ctx: Context) -> None:
    """Publish Docker events of our containers on the bus while this host holds the lease."""
    lease = await Lease.open(ctx.nc, ctx.subjects, "swarm-watcher", ctx.host)
    try:
        while True:
            if not await lease.acquire_or_renew():
                await asyncio.sleep(5)
                continue
            follower = asyncio.create_task(_publish_events(ctx))
            try:
                while await lease.acquire_or_renew():
                    done, _ = await asyncio.wait({follower}, timeout=5)
                    if done:
                        follower.result()  # re-raise: the runtime restarts us
            finally:
                follower.cancel()
                await asyncio.gather(follower, return_exceptions=True)
    finally:
        await lease.release()


async def _publish_events(ctx: Context) -> None:
    async for e in ctx.swarm.events():
        action = e.action.split(":")[0]  # "kill: signal 9" and the like
        await ctx.publish(ctx.subjects.docker(e.type, action), DockerEvent(
            type=e.type, action=action, at=e.at, app=e.app, id=e.id,
            service_id=e.service_id, container_id=e.container_id, exit_code=e.exit_code))


handlers.task(follow_engine)
