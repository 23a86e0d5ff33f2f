"""Per-instance client activity and open connections, published as throttled heartbeats.

Recording is O(1) and never touches NATS; one background task publishes. An instance's
heartbeat goes out at most once per heartbeat interval when something changed, and at once
when its open connections go 0 -> 1 or 1 -> 0 (the reaper's disconnect rule depends on it).
Only traffic FROM the client counts: a tab whose kernel only sends keep-alives is not active.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from swarmpool.bus.client import Publish
from swarmpool.bus.messages import Activity, Settled
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import short_id

log = logging.getLogger(__name__)


class _Entry:
    __slots__ = ("app", "traffic", "connections", "last_sent", "dirty", "page", "socket", "settled")

    def __init__(self, app: str) -> None:
        self.app = app
        self.traffic = False
        self.connections = 0
        self.last_sent = float("-inf")  # monotonic
        self.dirty = False
        self.page = False  # an HTML page was served
        self.socket = False  # a WebSocket opened
        self.settled = False  # the settle signal is on its way (once per instance and gateway)


class ActivityTracker:
    """Remembers traffic and connections per instance; `run()` publishes the heartbeats.

    `publish` is `Bus.publish` (or a fake); `clock` stamps the messages, `monotonic` throttles.
    """

    def __init__(self, publish: Publish, subjects: Subjects, interval: float, gateway: str,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 on_settled: Callable[[str, str], None] | None = None) -> None:
        self._send = publish
        self._on_settled = on_settled  # (app, id) once per instance: the page-load visit of the report
        self._subjects = subjects
        self._interval = interval
        self._gateway = gateway
        self._clock = clock
        self._monotonic = monotonic
        self._entries: dict[str, _Entry] = {}
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()
        self._settling: set[str] = set()
        self._wake = asyncio.Event()

    # ---- recording (O(1), no I/O) ----

    def seen(self, instance_id: str, app: str) -> None:
        """A client request for a routed instance: client traffic."""
        entry = self._entries.get(instance_id)
        if entry is None:
            entry = self._entries[instance_id] = _Entry(app)
        entry.traffic = True
        self._mark(instance_id, entry)

    def touch(self, instance_id: str) -> None:
        """A message from the client on an open connection (ignored once the route is gone)."""
        entry = self._entries.get(instance_id)
        if entry is not None:
            entry.traffic = True
            self._mark(instance_id, entry)

    def opened(self, instance_id: str, app: str) -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            entry = self._entries[instance_id] = _Entry(app)
        entry.connections += 1
        if entry.connections == 1:
            self._urgent.add(instance_id)
            self._wake.set()
        else:
            self._mark(instance_id, entry)

    def closed(self, instance_id: str) -> None:
        entry = self._entries.get(instance_id)
        if entry is None or entry.connections <= 0:
            return
        entry.connections -= 1
        if entry.connections == 0:
            self._urgent.add(instance_id)
            self._wake.set()
        else:
            self._mark(instance_id, entry)

    def page_served(self, instance_id: str, app: str, wait_for_socket: bool) -> None:
        """An HTML page went to the student; settled now unless a WebSocket must open too."""
        entry = self._entries.get(instance_id)
        if entry is None:
            entry = self._entries[instance_id] = _Entry(app)
        entry.page = True
        if not wait_for_socket or entry.socket:
            self._settle(instance_id, entry)

    def socket_opened(self, instance_id: str, app: str) -> None:
        """A WebSocket opened: with the page served, the student's page has loaded."""
        entry = self._entries.get(instance_id)
        if entry is None:
            entry = self._entries[instance_id] = _Entry(app)
        entry.socket = True
        if entry.page:
            self._settle(instance_id, entry)

    def _settle(self, instance_id: str, entry: _Entry) -> None:
        if not entry.settled:
            entry.settled = True  # sent at once, never throttled: a refill waits for it
            self._settling.add(instance_id)
            self._wake.set()
            if self._on_settled is not None:
                self._on_settled(entry.app, instance_id)

    def forget(self, instance_id: str) -> None:
        """The route is gone: stop reporting on this instance."""
        self._entries.pop(instance_id, None)
        self._dirty.discard(instance_id)
        self._urgent.discard(instance_id)
        self._settling.discard(instance_id)

    def tracking(self, instance_id: str) -> bool:
        """Whether this instance is in the activity table (it leaves when its route goes)."""
        return instance_id in self._entries

    def _mark(self, instance_id: str, entry: _Entry) -> None:
        if not entry.dirty:
            entry.dirty = True
            self._dirty.add(instance_id)
            self._wake.set()

    # ---- publishing ----

    async def run(self) -> None:
        """Publish heartbeats until cancelled."""
        while True:
            self._wake.clear()  # before flushing, so a change during the flush is not lost
            delay = await self.flush()
            try:
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def flush(self, force: bool = False) -> float | None:
        """Publish what is due; return seconds until the next throttled heartbeat is due."""
        now = self._monotonic()
        for instance_id in list(self._settling):
            self._settling.discard(instance_id)
            await self._publish_settled(instance_id)
        for instance_id in list(self._urgent):
            self._urgent.discard(instance_id)
            await self._publish(instance_id, now)
        next_due: float | None = None
        for instance_id in list(self._dirty):
            entry = self._entries.get(instance_id)
            if entry is None:
                self._dirty.discard(instance_id)
                continue
            due = entry.last_sent + self._interval
            if force or due <= now:
                await self._publish(instance_id, now)
            else:
                next_due = due - now if next_due is None else min(next_due, due - now)
        return next_due

    async def _publish_settled(self, instance_id: str) -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            return
        message = Settled(app=entry.app, id=instance_id, at=self._clock(), gateway=self._gateway)
        try:
            await self._send(self._subjects.settled(entry.app, instance_id), message)
        except Exception as err:  # NATS down: the keeper's cap refills anyway
            log.warning("settle signal for %s not published: %s", short_id(entry.app, instance_id), err)

    async def _publish(self, instance_id: str, now: float) -> None:
        entry = self._entries.get(instance_id)
        if entry is None:
            return
        message = Activity(app=entry.app, id=instance_id, at=self._clock(),
                           connections=entry.connections, traffic=entry.traffic, gateway=self._gateway)
        entry.traffic = False
        entry.dirty = False
        entry.last_sent = now
        self._dirty.discard(instance_id)
        try:
            await self._send(self._subjects.activity(entry.app, instance_id), message)
        except Exception as err:  # NATS down: the next change publishes again
            log.warning("heartbeat for %s not published: %s", short_id(entry.app, instance_id), err)
