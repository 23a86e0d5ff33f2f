"""The queues in JetStream KV: one ticket per waiting student, ordered by the bucket's own sequence numbers.

The bucket is the sequencer: a ticket's place is the stream sequence of its creation, the same on
every host, so any functions host may issue tickets and any gateway may show positions. Every write
is a compare-and-set on the ticket's revision; a mirror fed by a watch answers the reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from swarmpool.bus.messages import Ticket
from swarmpool.bus.state import Conflict, _Mirror, stream_replicas
from swarmpool.bus.subjects import Subjects

log = logging.getLogger(__name__)

WRONG_LAST_SEQUENCE = 10071  # JetStream's error code of a failed compare-and-set
_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(Ticket).decode


class Placed(msgspec.Struct, frozen=True):
    """A ticket, the revision it was read at, and its place (the sequence of its creation)."""

    ticket: Ticket
    revision: int

    @property
    def seq(self) -> int:
        return self.ticket.seq or self.revision


class TicketStore:
    """The queue bucket plus a live in-memory mirror of it, per app in arrival order."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._tickets: dict[str, Placed] = {}  # key -> placed
        self._mirror: _Mirror | None = None
        self._changed = asyncio.Condition()
        self._listeners: list[Callable[[Ticket | None, Ticket | None], None]] = []

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects, create: bool = True) -> "TicketStore":
        """Open (functions: create if missing) and mirror the bucket; a reader's missing bucket raises
        nats.js.errors.BucketNotFoundError."""
        js = nc.jetstream()
        if create:
            await js.create_key_value(bucket=subjects.queue_bucket, history=1, replicas=stream_replicas())
        store = cls(await js.key_value(subjects.queue_bucket))
        store._mirror = await _Mirror.start(await store._kv.watchall(), store._apply, "queue-mirror")
        return store

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    # ---- the mirror ----

    def _apply(self, entry: Any) -> None:
        key, revision = entry.key, entry.revision or 0
        old = self._tickets.get(key)
        if old is not None and old.revision >= revision:
            return
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._remember(key, None, revision)
            return
        try:
            ticket = _decode(entry.value)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed ticket under %s", key.split(".")[0])
            return
        self._remember(key, Placed(ticket, revision), revision)

    def _remember(self, key: str, placed: Placed | None, revision: int) -> None:
        """A change seen by the watch, or our own write (read-your-writes: in the mirror at once)."""
        old = self._tickets.get(key)
        if old is not None and old.revision >= revision:
            return
        if placed is None:
            if old is not None:
                del self._tickets[key]
                self._notify(old.ticket, None)
            return
        self._tickets[key] = placed
        self._notify(old.ticket if old else None, placed.ticket)

    def _notify(self, old: Ticket | None, new: Ticket | None) -> None:
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                log.exception("queue listener failed")
        asyncio.get_running_loop().create_task(self._wake())

    def poke(self) -> None:
        """Wake whoever waits for a change (something the queue depends on changed: an instance)."""
        asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def on_change(self, listener: Callable[[Ticket | None, Ticket | None], None]) -> Callable[[], None]:
        """Call `listener(old, new)` for every change the mirror sees; returns the function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until a queue changes, or the timeout passes (False)."""
        async with self._changed:
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._changed.wait()
                return True
            except TimeoutError:
                return False

    # ---- reads ----

    def queue(self, app: str) -> list[Placed]:
        """The app's tickets in arrival order (waiting and those whose turn came; confirmed or not)."""
        return sorted((p for p in self._tickets.values() if p.ticket.app == app), key=lambda p: p.seq)

    def apps(self) -> set[str]:
        return {p.ticket.app for p in self._tickets.values()}

    def length(self, app: str) -> int:
        """Students waiting in the app's line (confirmed tickets)."""
        return sum(p.ticket.app == app and p.ticket.confirmed for p in self._tickets.values())

    def get(self, app: str, ticket_id: str) -> Placed | None:
        return self._tickets.get(f"{app}.{ticket_id}")

    def position(self, app: str, ticket_id: str) -> int | None:
        """1 for the first in line; None when the ticket is not (or no longer) queued."""
        mine = self.get(app, ticket_id)
        if mine is None:
            return None
        return 1 + sum(p.ticket.app == app and p.ticket.confirmed and p.seq < mine.seq
                       for p in self._tickets.values())

    # ---- writes (the functions role) ----

    async def join(self, ticket: Ticket) -> Placed:
        """Create the ticket; its place is the sequence the bucket gave its creation."""
        revision = await self._kv.create(ticket.key, _encode(ticket))
        placed = Placed(ticket, revision)
        self._remember(ticket.key, placed, revision)
        return placed

    async def cas(self, current: Placed, new: Ticket) -> Placed:
        """Replace `current` by `new` iff unchanged since read (its place is kept); Conflict otherwise."""
        new = msgspec.structs.replace(new, seq=current.seq)
        try:
            revision = await self._kv.update(new.key, _encode(new), last=current.revision)
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise Conflict(f"ticket {new.app}.{new.id[:4]}") from err
        placed = Placed(new, revision)
        self._remember(new.key, placed, revision)
        return placed

    async def remove(self, current: Placed) -> bool:
        """Delete the ticket iff unchanged since read; whether this call removed it."""
        try:
            await self._kv.delete(current.ticket.key, last=current.revision)
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            return False
        except nats.js.errors.APIError as err:
            if err.err_code == WRONG_LAST_SEQUENCE:  # nats-py raises a delete's CAS failure as a plain 400
                return False
            raise
        self._remember(current.ticket.key, None, 1 << 62)
        return True
