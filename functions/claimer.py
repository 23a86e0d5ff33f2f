"""claimer: hands out the oldest ready instance, exactly once, by CAS ready -> claimed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import msgspec

from swarmpool.bus.links import Links, short_link
from swarmpool.bus.messages import (ClaimRefused, ClaimReply, ClaimRequest, Claimed, Queued, Released, ReleaseRequest,
                                    Ticket)
from swarmpool.bus.queue import Placed, TicketStore
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Conflict, Versioned
from swarmpool.functions import lifecycle
from swarmpool.functions.policy import claimable, live_sessions
from swarmpool.functions.queue import QueueState, tickets_of
from swarmpool.ids import new_instance_id

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


async def try_claim(ctx: Context, app: str, browser: str = "", skip: set[str] | None = None) -> Claimed | None:
    """One pass over the ready instances (but those in `skip`, keys), oldest first (the mirror keeps them in
    order: no sort per click); None when none could be won."""
    claiming = ctx.state(ClaimerState).claiming
    passed: set[str] = set(skip or ())  # keys this pass tried or may not hand out
    while (current := ctx.store.oldest_ready(app, skip=passed | claiming if claiming else passed)) is not None:
        passed.add(current.instance.key)
        if not claimable(current.instance):
            continue
        won = await _take(ctx, current, browser)
        if won is not None:
            return won
    return None


async def _take(ctx: Context, current: Versioned, browser: str) -> Claimed | None:
    """CAS one ready instance to claimed for `browser`; None when another claim won it."""
    claiming = ctx.state(ClaimerState).claiming
    key = current.instance.key
    claiming.add(key)  # concurrent local claims try different instances
    try:
        now = ctx.clock()
        won = await ctx.store.cas(current, msgspec.structs.replace(
            current.instance, state="claimed", claimed_at=now, last_activity=now, browser=browser))
    except Conflict:
        return None  # another claimer (or host) was faster
    finally:
        claiming.discard(key)
    spec = ctx.app(current.instance.app)
    assert spec is not None
    log.info("claimed %s", won.instance.short)
    return Claimed(id=won.instance.id, app=won.instance.app, endpoint=won.instance.endpoint, deep_link=spec.deep_link)


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
    if request.ticket:
        return await _claim_for_ticket(ctx, request)
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
    """Wait (at most the request's wait) for a ready instance, within the browser's limit; or, for a
    gateway that serves the queue, take one at once or join the queue."""
    store = await tickets_of(ctx) if request.queue and request.browser else None
    if store is not None:
        return await _claim_or_queue(ctx, request, store)
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
        tickets = ctx.state(QueueState).tickets
        held = _held(tickets.queue(app) if tickets is not None else [])  # never an instance held for a turn
        if limit:
            async with browser_turn(ctx.state(ClaimerState), f"{app}.{request.browser}"):
                refused = _limit_refusal(ctx, app, request.browser)
                if refused is not None:
                    return refused
                claimed = await try_claim(ctx, app, request.browser, skip=held)
        else:
            claimed = await try_claim(ctx, app, skip=held)
        if claimed is not None:
            ctx.metrics.claims.labels(app, "claimed").inc()
            ctx.metrics.observe_claim(app, loop.time() - started)
            return claimed
        remaining = deadline - loop.time()
        if remaining <= 0:
            ctx.metrics.claims.labels(app, "empty").inc()
            return ClaimRefused(app=app, reason="empty", retry_after=3)
        await ctx.store.wait_changed(remaining)


def _limit_refusal(ctx: Context, app: str, browser: str) -> ClaimRefused | None:
    """The browser's limit reached (its sessions named), or None."""
    limit = ctx.settings.per_browser_limit if browser else 0
    mine = live_sessions(ctx.store.sessions(app, browser), browser) if limit else []
    if limit and len(mine) >= limit:
        ctx.metrics.claims.labels(app, "limit").inc()
        return ClaimRefused(app=app, reason="limit", sessions=[r.id for r in mine])
    return None


def _held(queue: list[Placed]) -> set[str]:
    """Keys of the ready instances held for the tickets (of one app's queue) whose turn came."""
    return {f"{p.ticket.app}.{p.ticket.instance}" for p in queue if p.ticket.state == "turn"}


def _queued(ctx: Context, store: TicketStore, placed: Placed) -> Queued:
    ticket = placed.ticket
    return Queued(app=ticket.app, ticket=ticket.id, position=store.position(ticket.app, ticket.id) or 1)


async def _claim_or_queue(ctx: Context, request: ClaimRequest, store: TicketStore) -> ClaimReply:
    """Nobody waiting: the oldest ready instance, as before. Else (or none ready): a place in line, or the
    browser's ticket it already holds (a second click keeps the place); the cap full: "full"."""
    app = request.app
    loop = asyncio.get_running_loop()
    started = loop.time()
    if not await ctx.config.wait_trusted(min(max(request.wait, 0.0), MAX_WAIT)):
        ctx.metrics.claims.labels(app, "reconciling").inc()
        return ClaimRefused(app=app, reason="empty", retry_after=RECONCILING_RETRY)
    async with browser_turn(ctx.state(ClaimerState), f"{app}.{request.browser}"):
        refused = _limit_refusal(ctx, app, request.browser)
        if refused is not None:
            return refused
        queue = store.queue(app)
        for placed in queue:
            if placed.ticket.browser == request.browser:
                ctx.metrics.claims.labels(app, "queued").inc()
                return _queued(ctx, store, placed)
        if not any(p.ticket.confirmed for p in queue):  # nobody waits (a ticket whose page never came holds no place)
            claimed = await try_claim(ctx, app, request.browser, skip=_held(queue))
            if claimed is not None:
                ctx.metrics.claims.labels(app, "claimed").inc()
                ctx.metrics.observe_claim(app, loop.time() - started)
                return claimed
        spec = ctx.app(app)
        cap = spec.pool.queue_max if spec is not None else None
        if cap is not None and len(queue) >= cap:
            ctx.metrics.claims.labels(app, "full").inc()
            return ClaimRefused(app=app, reason="full", retry_after=30)
        placed = await store.join(Ticket(id=new_instance_id(), app=app, browser=request.browser,
                                         link=request.link, at=ctx.clock()))
    ctx.metrics.claims.labels(app, "queued").inc()
    log.info("ticket %s.%s joined the queue", app, placed.ticket.id[:4])
    return _queued(ctx, store, placed)


async def _claim_for_ticket(ctx: Context, request: ClaimRequest) -> ClaimReply:
    """A ticket's browser came for its turn: claim the instance held for it (its lecture link counted now).
    Not its turn yet: its place. Its instance lost meanwhile: first in line again."""
    app = request.app
    store = await tickets_of(ctx)
    placed = store.get(app, request.ticket) if store is not None else None
    if store is None or placed is None or not request.browser or placed.ticket.browser != request.browser:
        ctx.metrics.claims.labels(app, "ticket").inc()
        return ClaimRefused(app=app, reason="ticket", retry_after=0)
    if placed.ticket.state != "turn":
        return _queued(ctx, store, placed)
    link = placed.ticket.link
    links = Links(ctx.config.kv)
    if link:
        refused_link = await links.reserve(link, app, ctx.clock())
        if refused_link is not None:
            await store.remove(placed)
            ctx.metrics.claims.labels(app, refused_link).inc()
            return ClaimRefused(app=app, reason=refused_link, retry_after=0)
    reply: ClaimReply | None = None
    try:
        reply = await _serve_turn(ctx, store, placed, request.browser)
        return reply
    finally:
        if link and not isinstance(reply, Claimed):
            await ctx.isolated("give back a link's claim", links.give_back(link))


async def _serve_turn(ctx: Context, store: TicketStore, placed: Placed, browser: str) -> ClaimReply:
    app = placed.ticket.app
    async with browser_turn(ctx.state(ClaimerState), f"{app}.{browser}"):
        refused = _limit_refusal(ctx, app, browser)
        if refused is not None:
            await store.remove(placed)  # the limit page offers to end sessions; a new click queues again
            return refused
        current = ctx.store.get(app, placed.ticket.instance)
        won = await _take(ctx, current, browser) if current is not None and current.instance.state == "ready" else None
    if won is None:  # lost to a claim that did not see the queue yet: back to the head of the line
        try:
            placed = await store.cas(placed, msgspec.structs.replace(placed.ticket, state="waiting", instance="",
                                                                     turn_at=None))
        except Conflict:
            pass
        return _queued(ctx, store, placed)
    if not await store.remove(placed):
        fresh = store.get(app, placed.ticket.id)
        if fresh is not None:
            await store.remove(fresh)
    ctx.metrics.claims.labels(app, "claimed").inc()
    ctx.metrics.observe_claim(app, max(0.0, ctx.clock() - placed.ticket.at))
    log.info("ticket %s.%s served", app, placed.ticket.id[:4])
    return won


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
