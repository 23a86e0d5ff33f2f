"""claimer: hands out the oldest ready instance, exactly once, by CAS ready -> claimed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec

from swarmpool.bus.links import Links, short_link
from swarmpool.bus.messages import ClaimRefused, ClaimReply, ClaimRequest, Claimed, Released, ReleaseRequest
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Conflict
from swarmpool.functions import lifecycle
from swarmpool.functions.policy import claimable, live_sessions

log = logging.getLogger(__name__)

MAX_WAIT = 10.0
RECONCILING_RETRY = 1.0  # seconds a waiting room waits while the pool is reconciled with the engine
RELEASED = "ended by its browser"  # the retire reason of a session its browser asked to end
UNKNOWN_APP = "_unknown"  # one metrics label for every unknown app name, so labels stay bounded


@dataclass
class _Turn:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


@dataclass
class ClaimerState:
    claiming: set[str] = field(default_factory=set)  # instance keys a local claim is trying now
    browsers: dict[str, _Turn] = field(default_factory=dict)  # "<app>.<browser>" -> its claims' turn
    removing: set[asyncio.Task[None]] = field(default_factory=set)  # released sessions' removals under way


@asynccontextmanager
async def browser_turn(state: ClaimerState, key: str) -> AsyncIterator[None]:
    """One browser's claims of one app count and claim one at a time on this host, so two
    concurrent clicks cannot both pass the limit (the mirror learns of a local CAS at once)."""
    turn = state.browsers.get(key)
    if turn is None:
        turn = state.browsers[key] = _Turn()
    turn.users += 1
    try:
        async with turn.lock:
            yield
    finally:
        turn.users -= 1
        if turn.users == 0:
            del state.browsers[key]


handlers = Handlers(state=ClaimerState)


async def try_claim(ctx: Context, app: str, browser: str = "") -> Claimed | None:
    """One pass over the ready instances, oldest first (the mirror keeps them in order: no sort per click);
    None when none could be won."""
    claiming = ctx.state(ClaimerState).claiming
    passed: set[str] = set()  # keys this pass tried or may not hand out
    while (current := ctx.store.oldest_ready(app, skip=passed | claiming if claiming else passed)) is not None:
        record = current.instance
        passed.add(record.key)
        if not claimable(record):
            continue
        claiming.add(record.key)  # concurrent local claims try different instances
        try:
            now = ctx.clock()
            won = await ctx.store.cas(current, msgspec.structs.replace(
                current.instance, state="claimed", claimed_at=now, last_activity=now, browser=browser))
        except Conflict:
            continue  # another claimer (or host) was faster: try the next one
        finally:
            claiming.discard(record.key)
        spec = ctx.app(app)
        assert spec is not None
        log.info("claimed %s", won.instance.short)
        return Claimed(id=won.instance.id, app=app, endpoint=won.instance.endpoint, deep_link=spec.deep_link)
    return None


# the app travels in the request and must be the subject's: bus permissions protect subjects
@handlers.on(lambda s: s.claim_all(), ClaimRequest, reply=True, concurrency=1024,
             expect=lambda s, request: s.claim(request.app))
async def claim(ctx: Context, request: ClaimRequest) -> ClaimReply:
    app = request.app
    if ctx.app(app) is None:
        ctx.metrics.claims.labels(UNKNOWN_APP, "unknown_app").inc()
        return ClaimRefused(app=app, reason="unknown_app")
    if ctx.config.cached(app).paused:
        ctx.metrics.claims.labels(app, "paused").inc()
        return ClaimRefused(app=app, reason="paused", retry_after=10)
    spec = ctx.app(app)
    if not request.link:
        if spec is not None and spec.require_link:
            ctx.metrics.claims.labels(app, "link_missing").inc()
            return ClaimRefused(app=app, reason="link_missing", retry_after=0)
        return await _claim(ctx, request)
    # a lecture link: counted on its record before an instance is taken (one count for every host),
    # given back when the claim ends without one
    links = Links(ctx.config.kv)
    refused = await links.reserve(request.link, app, ctx.clock())
    if refused is not None:
        ctx.metrics.claims.labels(app, refused).inc()
        log.info("claim of %s refused: link %s %s", app, short_link(request.link), refused)
        return ClaimRefused(app=app, reason=refused, retry_after=0)
    reply: ClaimReply | None = None
    try:
        reply = await _claim(ctx, request)
        return reply
    finally:
        if not isinstance(reply, Claimed):
            await ctx.isolated("give back a link's claim", links.give_back(request.link))


async def _claim(ctx: Context, request: ClaimRequest) -> ClaimReply:
    """Wait (at most the request's wait) for a ready instance, within the browser's limit."""
    app = request.app
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + min(max(request.wait, 0.0), MAX_WAIT)
    limit = ctx.settings.per_browser_limit if request.browser else 0
    while True:
        if not await ctx.config.wait_trusted(deadline - loop.time()):
            # the engine was out of sight (restart, stream gap): records may name dead instances
            ctx.metrics.claims.labels(app, "reconciling").inc()
            return ClaimRefused(app=app, reason="empty", retry_after=RECONCILING_RETRY)
        if limit:
            async with browser_turn(ctx.state(ClaimerState), f"{app}.{request.browser}"):
                mine = live_sessions(ctx.store.sessions(app, request.browser), request.browser)
                if len(mine) >= limit:
                    ctx.metrics.claims.labels(app, "limit").inc()
                    return ClaimRefused(app=app, reason="limit", sessions=[r.id for r in mine])
                claimed = await try_claim(ctx, app, request.browser)
        else:
            claimed = await try_claim(ctx, app)
        if claimed is not None:
            ctx.metrics.claims.labels(app, "claimed").inc()
            ctx.metrics.observe_claim(app, loop.time() - started)
            return claimed
        remaining = deadline - loop.time()
        if remaining <= 0:
            ctx.metrics.claims.labels(app, "empty").inc()
            return ClaimRefused(app=app, reason="empty", retry_after=3)
        await ctx.store.wait_changed(remaining)


# a browser at its limit ends its own sessions (they are found by its key, never by id: nothing to forge)
@handlers.on(lambda s: s.release_all(), ReleaseRequest, reply=True,
             expect=lambda s, request: s.release(request.app))
async def release(ctx: Context, request: ReleaseRequest) -> Released:
    app = request.app
    if ctx.app(app) is None or not request.browser:
        return Released(app=app, ended=0)
    async with browser_turn(ctx.state(ClaimerState), f"{app}.{request.browser}"):
        # retiring under the browser's turn: its next claim already sees them gone
        mine = live_sessions(ctx.store.sessions(app, request.browser), request.browser)
        marked = [await lifecycle.begin_retire(ctx, app, r.id, RELEASED) for r in mine]
    ending = [r for r in marked if r is not None and r.reason == RELEASED]
    log.info("released %d session(s) of %s for one browser", len(ending), app)
    # the answer waits for the records (retiring: no longer counted, no longer routed), not for Docker,
    # which may take longer than the gateway waits; a removal cut short is finished by the reaper
    removing = ctx.state(ClaimerState).removing
    for record in ending:
        task = asyncio.create_task(ctx.isolated("remove released", lifecycle.remove(ctx, record)),
                                   name="remove-released")
        removing.add(task)
        task.add_done_callback(removing.discard)
    return Released(app=app, ended=len(ending))
