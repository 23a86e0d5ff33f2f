"""queue: clicks that find no ready instance wait in line per app and are served first come, first served.

Any host issues tickets (the queue bucket's sequence numbers are their order, the same everywhere);
one host at a time, holding the `queue` lease, hands out turns: it holds the oldest ready instance for
the first ticket in line (the instance stays `ready`: it is claimed only when that ticket's browser
comes for it, through the claimer), and lapses tickets whose waiting page is gone. Every host hears
the gateways' heartbeats, so the next lease holder knows who is still waiting.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import msgspec

from swarmpool.bus.messages import Instance, QueueSeen, Ticket
from swarmpool.bus.queue import Placed, TicketStore
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.state import Conflict
from swarmpool.functions.policy import claimable

log = logging.getLogger(__name__)

OPEN_WAIT = 5.0  # seconds a claim waits for this host's queue mirror to open
SERVE_EVERY = 0.5  # seconds between two passes when nothing changes (lapses are timed)
CONFIRM_WAIT = 6.0  # seconds a ticket may wait for its browser to reach its page, then it lapses


@dataclass
class QueueState:
    tickets: TicketStore | None = None
    opened: asyncio.Event = field(default_factory=asyncio.Event)
    seen: dict[str, float] = field(default_factory=dict)  # ticket key -> when a gateway last said it is held
    started: float | None = None  # when this host began hearing heartbeats (a new leader's grace)


handlers = Handlers(state=QueueState)


async def tickets_of(ctx: Context) -> TicketStore | None:
    """This host's queue mirror, once open (None if it does not open in time: claims then wait as before)."""
    state = ctx.state(QueueState)
    if state.tickets is None:
        try:
            async with asyncio.timeout(OPEN_WAIT):
                await state.opened.wait()
        except TimeoutError:
            return None
    return state.tickets


def queue_length(ctx: Context, app: str) -> int:
    """Students in the app's queue, as this host's mirror sees them (0 before it opens)."""
    store = ctx.state(QueueState).tickets
    return store.length(app) if store is not None else 0


@handlers.task
async def follow_queue(ctx: Context) -> None:
    """Open the queue bucket and mirror it for as long as the host runs."""
    state = ctx.state(QueueState)
    store = await ctx.open_tickets()
    state.tickets, state.started = store, ctx.clock()
    state.opened.set()
    stop_waking = ctx.store.on_change(lambda old, new: _wake(state, old, new))
    try:
        await asyncio.Event().wait()
    finally:
        stop_waking()
        state.tickets = None
        state.opened.clear()
        await store.close()


def _wake(state: QueueState, old: Instance | None, new: Instance | None) -> None:
    """An instance changed state (not a heartbeat's fields): the lease holder's pass runs now (woken through the
    ticket mirror's condition), when anyone waits."""
    changed = old is None or new is None or old.state != new.state
    if changed and state.tickets is not None and state.tickets.apps():
        state.tickets.poke()


@handlers.on(lambda s: s.queue_seen_all(), QueueSeen, queue=False, concurrency=16,
             expect=lambda s, seen: s.queue_seen(seen.app))
async def seen(ctx: Context, message: QueueSeen) -> None:
    """A gateway still holds these waiting pages (every host keeps this: the next lease holder needs it)."""
    now = ctx.clock()
    known = ctx.state(QueueState).seen
    for ticket in message.tickets:
        known[f"{message.app}.{ticket}"] = now


def last_seen(ticket: Ticket, heard: float | None, started: float | None) -> float:
    """When the ticket's page was last known held: a heartbeat, its joining, its turn, or (for a host that
    just took over) when this host began to listen."""
    return max(heard or 0.0, ticket.at, ticket.turn_at or 0.0, started or 0.0)


def lapsed(placed: list[Placed], seen: dict[str, float], started: float | None, now: float,
           window: float) -> list[Placed]:
    """Tickets whose waiting page has been gone for longer than the window, or never came (CONFIRM_WAIT)."""
    return [p for p in placed
            if now - last_seen(p.ticket, seen.get(p.ticket.key), started) > window
            or (not p.ticket.confirmed and p.ticket.key not in seen and now - p.ticket.at > min(window, CONFIRM_WAIT))]


def to_confirm(placed: list[Placed], seen: dict[str, float]) -> list[Placed]:
    """Tickets whose page a gateway has now seen: from now on they hold their place."""
    return [p for p in placed if not p.ticket.confirmed and p.ticket.key in seen]


def turns(queue: list[Placed], ready: list[Instance],
          records: list[Instance]) -> tuple[list[Placed], list[tuple[Placed, Instance]]]:
    """What the lease holder does for one app: the turns to take back (their instance is no longer ready, nor
    claimed by the ticket's own browser: being served), and the waiting tickets, first in line first, paired
    with the oldest `ready` instances nobody holds."""
    ready_ids = {r.id for r in ready}
    serving = {(r.id, r.browser) for r in records if r.state == "claimed"}
    back = [p for p in queue if p.ticket.state == "turn" and p.ticket.instance not in ready_ids
            and (p.ticket.instance, p.ticket.browser) not in serving]
    held = {p.ticket.instance for p in queue if p.ticket.state == "turn" and p.ticket.instance in ready_ids}
    free = [r for r in ready if r.id not in held]
    waiting = [p for p in queue if p.ticket.state == "waiting" and p.ticket.confirmed]
    return back, list(zip(waiting, free))


@handlers.singleton("queue")
async def serve(ctx: Context) -> None:
    """Hand out turns in arrival order and lapse abandoned tickets, on every change (and twice a second)."""
    store = await tickets_of(ctx)
    while store is None:
        store = await tickets_of(ctx)
    while True:
        await ctx.isolated("serve the queues", serve_pass(ctx, store))
        await store.wait_changed(SERVE_EVERY)


async def serve_pass(ctx: Context, store: TicketStore) -> None:
    state = ctx.state(QueueState)
    now = ctx.clock()
    window = float(ctx.settings.queue_window)
    for app in sorted(store.apps()):
        queue = store.queue(app)
        for p in lapsed(queue, state.seen, state.started, now, window):
            if await store.remove(p):
                log.info("ticket %s.%s lapsed (its page is gone)%s", app, p.ticket.id[:4],
                         ", its held instance stays ready" if p.ticket.state == "turn" else "")
        gone = {p.ticket.key for p in queue} - {p.ticket.key for p in store.queue(app)}
        for key in gone:
            state.seen.pop(key, None)
        for p in to_confirm(store.queue(app), state.seen):
            await _cas(store, p, msgspec.structs.replace(p.ticket, confirmed=True))
        if ctx.app(app) is None or ctx.config.cached(app).paused:
            continue
        ready = [r for r in ctx.store.ready(app) if claimable(r)]  # claim order, from the mirror's index
        back, serve_now = turns(store.queue(app), ready, ctx.store.all(app))
        for p in back:  # its instance went (failed, recycled) or another host's claim took it: first in line again
            await _cas(store, p, msgspec.structs.replace(p.ticket, state="waiting", instance="", turn_at=None))
        for p, instance in serve_now:
            if await _cas(store, p, msgspec.structs.replace(p.ticket, state="turn", instance=instance.id, turn_at=now)):
                log.info("ticket %s.%s: its turn (%s held)", app, p.ticket.id[:4], instance.short)
    for key in [k for k in state.seen if store.get(*k.split(".", 1)) is None and now - state.seen[k] > window]:
        del state.seen[key]  # heartbeats of tickets this host never saw (or long gone)


async def _cas(store: TicketStore, current: Placed, new: Ticket) -> bool:
    try:
        await store.cas(current, new)
        return True
    except Conflict:
        return False  # the claimer served or moved it meanwhile: the next pass sees it
