"""The queue's pages: `/launch/<app>/ticket/<ticket>` shows a waiting student's place (or, on their turn, answers
303 to their fresh session) and `.../wait` holds the connection that keeps the place while the tab is open.

The ticket is bound to the browser cookie it was issued to: a copied ticket URL serves nobody else. Page
script never sees a session's URL: the held connection says only "your turn", and the script then navigates
to the ticket URL, whose 303 the browser follows. Without script, a refresh within the queue window keeps
the place.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from swarmpool.bus.client import Publish
from swarmpool.bus.messages import Instance, QueueSeen
from swarmpool.bus.queue import Placed, TicketStore
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import valid_id

log = logging.getLogger(__name__)

RATE_SAMPLES = 60  # ready transitions per app remembered for the refill rate
RATE_HORIZON = 300.0  # seconds: older ones no longer say how fast sessions come now
APPEAR_WAIT = 2.0  # seconds a ticket page waits for a ticket just issued to reach this gateway's mirror
KEEPALIVE = 5.0  # seconds between two writes on a held connection (a closed one is noticed by then)


def ticket_path(app: str, ticket: str) -> str:
    """The waiting page of one ticket (below /launch/: the browser cookie's path over plain HTTP)."""
    return f"/launch/{app}/ticket/{ticket}"


def refresh_seconds(window: float) -> int:
    """The no-script page's refresh: three chances within the window to keep the place."""
    return max(1, int(window // 3))


def heartbeat_seconds(window: float) -> float:
    """How often this gateway tells the functions which waiting pages it holds."""
    return max(0.5, min(2.0, window / 4))


class RefillRate:
    """How fast an app's sessions become ready, from the ready transitions this gateway's mirror sees."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._ready: dict[str, deque[float]] = {}

    def on_change(self, old: Instance | None, new: Instance | None) -> None:
        if new is not None and new.state == "ready" and (old is None or old.state != "ready"):
            self._ready.setdefault(new.app, deque(maxlen=RATE_SAMPLES)).append(new.ready_at or self._clock())

    def per_second(self, app: str) -> float | None:
        """Instances per second over the recent ready transitions; None when too few to say."""
        now = self._clock()
        times = [t for t in self._ready.get(app, ()) if now - t <= RATE_HORIZON]
        if len(times) < 2:
            return None
        span = max(now - times[0], times[-1] - times[0])
        return len(times) / span if span > 0 else None

    def estimate(self, app: str, position: int) -> float | None:
        """Seconds until `position` is served at the current rate (None: no rate yet)."""
        rate = self.per_second(app)
        return position / rate if rate else None


@dataclass
class QueueView:
    """A gateway's view of the queues: the ticket mirror (read-only), the refill rate, the held pages."""

    tickets: TicketStore
    publish: Publish
    subjects: Subjects
    host_label: str
    rate: RefillRate = field(default_factory=RefillRate)
    held: dict[str, int] = field(default_factory=dict)  # "<app>.<ticket>" -> open held connections
    recent: set[str] = field(default_factory=set)  # pages shown since the last heartbeat

    def hold(self, app: str, ticket: str) -> Callable[[], None]:
        """Count one held connection of a waiting page; returns the function that lets it go."""
        key = f"{app}.{ticket}"
        self.held[key] = self.held.get(key, 0) + 1

        def release() -> None:
            self.held[key] -= 1
            if self.held[key] <= 0:
                del self.held[key]
        return release

    async def shown(self, app: str, ticket: str) -> None:
        """A waiting page was shown: said at once (its first showing confirms the ticket's place)."""
        self.recent.add(f"{app}.{ticket}")
        try:
            await self.publish(self.subjects.queue_seen(app),
                               QueueSeen(app=app, tickets=[ticket], at=time.time(), gateway=self.host_label))
        except Exception as err:
            log.warning("queue heartbeat not published: %s", err)

    async def heartbeat(self) -> None:
        """Tell the functions which waiting pages are still here: held connections and recent refreshes."""
        keys = set(self.held) | self.recent
        self.recent = set()
        by_app: dict[str, list[str]] = {}
        for key in keys:
            app, _, ticket = key.partition(".")
            by_app.setdefault(app, []).append(ticket)
        for app, tickets in by_app.items():
            await self.publish(self.subjects.queue_seen(app),
                               QueueSeen(app=app, tickets=tickets, at=time.time(), gateway=self.host_label))

    async def run(self, window: Callable[[], float]) -> None:
        while True:
            await asyncio.sleep(heartbeat_seconds(window()))
            try:
                await self.heartbeat()
            except Exception as err:  # NATS away for a moment: the next beat tries again
                log.warning("queue heartbeat not published: %s", err)

    async def find(self, app: str, ticket: str, browser: str) -> Placed | None:
        """The ticket, when it is queued and was issued to `browser` (waiting briefly for one just issued)."""
        deadline = asyncio.get_running_loop().time() + APPEAR_WAIT
        placed = self.tickets.get(app, ticket)
        while placed is None and asyncio.get_running_loop().time() < deadline:
            await self.tickets.wait_changed(deadline - asyncio.get_running_loop().time())
            placed = self.tickets.get(app, ticket)
        if placed is None or not browser or placed.ticket.browser != browser:
            return None
        return placed

    def where(self, app: str, ticket: str) -> dict[str, object]:
        """What the page shows: the place, the estimate in seconds (None: unknown), the queue's length."""
        position = self.tickets.position(app, ticket) or 1
        estimate = self.rate.estimate(app, position)
        return {"position": position, "estimate": None if estimate is None else math.ceil(estimate),
                "queued": self.tickets.length(app)}


def place_text(where: dict[str, object]) -> str:
    """One sentence for the page and its live updates."""
    position, estimate = where["position"], where["estimate"]
    first = "You are next in line." if position == 1 else f"You are number {position} in line."
    if not isinstance(estimate, int):
        return f"{first} Sessions are being prepared; how fast they come is not known yet."
    if estimate < 60:
        return f"{first} At the pace sessions are becoming ready, about {max(estimate, 1)} seconds."
    return f"{first} At the pace sessions are becoming ready, about {math.ceil(estimate / 60)} minutes."


def event(name: str, data: dict[str, object] | None = None) -> bytes:
    """One server-sent event."""
    return f"event: {name}\ndata: {json.dumps(data or {})}\n\n".encode()


def browser_of(cookie: str | None) -> str:
    """The bus key of a browser cookie (as launch computes it); "" without one."""
    return hashlib.sha256(cookie.encode()).hexdigest()[:32] if cookie else ""


def valid_ticket(ticket: str) -> bool:
    return valid_id(ticket)
