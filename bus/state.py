"""Instance records in JetStream KV: an in-memory mirror fed by a watch, writes by compare-and-set.

Every write is a CAS on the record's revision, so two claimers can never both win the same
ready instance, on one host or many, before or after a crash. Every state change is also
published as an ``InstanceEvent`` on ``sp.instance.<app>.<id>.<event>`` (kept in a stream).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import os
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from swarmpool.bus.messages import (TRANSITIONS, CatalogueFile, EngineTrust, EventKind, Instance, InstanceEvent, PoolOverride,
                                    Requester)
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import short_id

log = logging.getLogger(__name__)

_encode = msgspec.json.Encoder().encode
_decode_instance = msgspec.json.Decoder(Instance).decode
_decode_override = msgspec.json.Decoder(PoolOverride).decode
_decode_trust = msgspec.json.Decoder(EngineTrust).decode
TRUST_KEY = "engine.trust"  # in the config bucket: see EngineTrust
CATALOGUE_KEY = "catalogue"  # in the config bucket: see CatalogueFile
_decode_catalogue = msgspec.json.Decoder(CatalogueFile).decode
T = TypeVar("T")


class Conflict(Exception):
    """The record changed (or vanished) since it was read: someone else won the CAS."""


class InvalidTransition(Exception):
    """A state change that the lifecycle does not allow."""


async def read_modify_cas(kv: KeyValue, key: str, read: Callable[[], Awaitable[tuple[T, int]]],
                          change: Callable[[T], T | None], *, refresh: Callable[[], Awaitable[object]] | None = None,
                          attempts: int = 8, what: str | None = None) -> tuple[T, int, bool]:
    """Read-modify-CAS of one key, retried when another writer got there first: `read` gives the value and
    its revision (0: no key yet, the write creates it), `change` the new value (None: leave it alone); after a
    lost race `refresh` learns what was stored (when `read` answers from a mirror). Returns the value, its
    revision and whether this call wrote it; Conflict after `attempts` lost races."""
    for _ in range(attempts):
        current, revision = await read()
        new = change(current)
        if new is None:
            return current, revision, False
        try:
            if revision:
                revision = await kv.update(key, _encode(new), last=revision)
            else:
                revision = await kv.create(key, _encode(new))
        except nats.js.errors.KeyWrongLastSequenceError:
            if refresh is not None:
                await refresh()
            continue
        return new, revision, True
    raise Conflict(f"{what or key}: gave up after {attempts} attempts")


async def stored_keys(kv: KeyValue, prefix: str = "") -> list[str]:
    """Every key of the bucket that starts with `prefix`, as the server holds them at one instant."""
    # kv.keys() is an ordered watch that ends at the first message saying nothing is pending: under
    # concurrent writes it ends early and misses keys that are being rewritten (a link claimed on,
    # a record heartbeating). The stream's subjects are one snapshot; a deleted key is still listed
    # (its tombstone), so its get() says it is not found.
    info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}{prefix}>")
    return sorted(subject[len(kv._pre):] for subject in info.state.subjects or {})


class Versioned(msgspec.Struct, frozen=True):
    """A record and the KV revision it was read at."""

    instance: Instance
    revision: int


REPLICAS_ENV = "SWARMPOOL_NATS_REPLICAS"  # set by `swarmpool deploy` on function hosts; `up` has one server


def stream_replicas() -> int:
    """Copies of every bucket and of the event log across the NATS cluster: SWARMPOOL_NATS_REPLICAS (the
    deploy's --nats-replicas, 1 to 5), else 1."""
    raw = os.environ.get(REPLICAS_ENV, "").strip()
    if not raw:
        return 1
    if not raw.isdigit() or not 1 <= int(raw) <= 5:
        raise ValueError(f"{REPLICAS_ENV} must be a number of NATS servers from 1 to 5, got {raw!r}")
    return int(raw)


async def ensure_streams(js: JetStreamContext, subjects: Subjects) -> None:
    """Create the buckets and the event stream if missing (idempotent), each with `stream_replicas()`
    copies: a record or event written is on that many servers before the write is answered."""
    replicas = stream_replicas()
    await js.create_key_value(bucket=subjects.instances_bucket, history=1, replicas=replicas)
    await js.create_key_value(bucket=subjects.config_bucket, history=1, replicas=replicas)
    await js.create_key_value(bucket=subjects.leases_bucket, history=1, ttl=15, replicas=replicas)
    await ensure_event_log(js, subjects)


EVENTS_MAX_AGE = 7 * 86400  # seconds the event log keeps an event
EVENTS_MAX_BYTES = 256 * 1024**2  # and at most this much of them (the oldest go first)


async def ensure_event_log(js: JetStreamContext, subjects: Subjects) -> api.StreamInfo:
    """The event log: instance events, operator commands and gateways' visits, bounded by age and size. A stream made
    by an older version (other subjects or limits) is updated in place, keeping its events."""
    config = api.StreamConfig(name=subjects.events_stream,
                              subjects=[subjects.instance_events_all(), subjects.audit_all(), subjects.visits_all()],
                              max_age=EVENTS_MAX_AGE, max_bytes=EVENTS_MAX_BYTES,
                              storage=api.StorageType.FILE, discard=api.DiscardPolicy.OLD,
                              num_replicas=stream_replicas())
    try:
        info = await js.stream_info(subjects.events_stream)
    except nats.js.errors.NotFoundError:
        return await js.add_stream(config)
    have = info.config
    if (sorted(have.subjects or []) != sorted(config.subjects or []) or have.max_age != config.max_age
            or have.max_bytes != config.max_bytes or (have.num_replicas or 1) != config.num_replicas):
        log.info("upgrading the event log %s in place (subjects, age and size limits, replicas)",
                 subjects.events_stream)
        return await js.update_stream(config)
    return info


RECONNECT_CHECK = 0.25  # seconds between a mirror's looks at its connection's reconnect count


class _Mirror:
    """One KV watch followed by a task of its own: `apply(entry)` for every change (a failing entry is
    logged and skipped, never stops the mirror); started once the initial values are in."""

    def __init__(self, watcher: Any, apply: Callable[[Any], None], name: str) -> None:
        self._watcher = watcher
        self._apply = apply
        self._synced = asyncio.Event()
        self._task = asyncio.create_task(self._follow(), name=name)
        self._resumer = asyncio.create_task(self._resume_after_reconnects(), name=f"{name}-resume")

    @classmethod
    async def start(cls, watcher: Any, apply: Callable[[Any], None], name: str) -> "_Mirror":
        mirror = cls(watcher, apply, name)
        await asyncio.wait_for(mirror._synced.wait(), timeout=10)
        return mirror

    async def _follow(self) -> None:
        async for entry in self._watcher:
            if entry is None:  # end of the initial values
                self._synced.set()
                continue
            try:
                self._apply(entry)
            except Exception:
                log.exception("%s: bad entry under key %s", self._task.get_name(), entry.key.split(".")[0])

    async def _resume_after_reconnects(self) -> None:
        """After each reconnect, recreate the watch's consumer from the next revision at once."""
        # A restarted nats-server has lost the watch's (in-memory) consumer; nats-py recreates it only
        # after two missed idle heartbeats, leaving the mirror frozen 10-20 s (no refill, stale
        # routes). Its own reset, called early: resumes after the last revision applied, so no change
        # is missed and none applied twice; a reconnect to a server that kept the consumer costs a new one.
        jsi = getattr(getattr(getattr(self._watcher, "_sub", None), "_sub", None), "_jsi", None)
        conn = getattr(jsi, "_conn", None)
        if jsi is None or conn is None or not hasattr(jsi, "reset_ordered_consumer"):
            log.warning("%s: this nats-py hides the watch's consumer: after a reconnect the mirror resumes "
                        "only when nats-py misses two heartbeats", self._task.get_name())
            return
        seen = conn.stats["reconnects"]
        while not conn.is_closed:
            await asyncio.sleep(RECONNECT_CHECK)
            if conn.stats["reconnects"] == seen or not conn.is_connected:
                continue
            seen = conn.stats["reconnects"]
            consumer = jsi._psub._consumer
            for attempt in range(20):  # JetStream may need a moment after the server's port opened
                log.info("%s: reconnected: recreating its watch after revision %d", self._task.get_name(), jsi._sseq)
                await jsi.reset_ordered_consumer(jsi._sseq + 1)
                for _ in range(20):  # the new consumer is asked for in the background
                    await asyncio.sleep(RECONNECT_CHECK)
                    if jsi._psub._consumer != consumer or conn.stats["reconnects"] != seen:
                        break
                if jsi._psub._consumer != consumer or conn.stats["reconnects"] != seen or conn.is_closed:
                    break

    async def stop(self) -> None:
        """Stop the watch, then the tasks that follow it."""
        self._resumer.cancel()
        await asyncio.gather(self._resumer, return_exceptions=True)
        try:
            await self._watcher.stop()
        except Exception:  # the connection may already be gone at shutdown
            log.debug("watch stop failed", exc_info=True)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class _ReadyOrder:
    """The ready records of one app, oldest first (ready time, then id), kept sorted as the mirror changes:
    a claim finds the oldest in O(log n) and never sorts the pool."""

    def __init__(self) -> None:
        self._entries: list[tuple[float, str, str]] = []  # (ready time, id, key)

    @staticmethod
    def _entry(instance: Instance) -> tuple[float, str, str]:
        return (instance.ready_at or instance.created_at, instance.id, instance.key)

    def add(self, instance: Instance) -> None:
        bisect.insort(self._entries, self._entry(instance))

    def discard(self, instance: Instance) -> None:
        entry = self._entry(instance)
        i = bisect.bisect_left(self._entries, entry)
        if i < len(self._entries) and self._entries[i] == entry:
            del self._entries[i]

    def keys(self) -> list[str]:
        """Every key, oldest first."""
        return [key for _, _, key in self._entries]

    def first(self, skip: Collection[str]) -> str | None:
        """The key of the oldest ready record whose key is not in `skip`."""
        for _, _, key in self._entries:
            if key not in skip:
                return key
        return None

    def __len__(self) -> int:
        return len(self._entries)


class InstanceStore:
    """The instance bucket plus a live in-memory mirror of it, indexed by app, by ready order and by the
    browser holding a session, so that a click or an event costs the same with 10 or 1,000 records."""

    def __init__(self, nc: NATS, js: JetStreamContext, kv: KeyValue, subjects: Subjects,
                 clock: Callable[[], float]) -> None:
        self._nc = nc
        self._js = js
        self._kv = kv
        self._subjects = subjects
        self._clock = clock
        self._records: dict[str, Versioned] = {}
        self._by_app: dict[str, dict[str, Versioned]] = {}  # app -> key -> record
        self._ready: dict[str, _ReadyOrder] = {}  # app -> its ready records, oldest first
        self._sessions: dict[tuple[str, str], set[str]] = {}  # (app, browser) -> keys of its claimed records
        self._changed = asyncio.Condition()
        self._wake_pending = False  # one wake-up task covers every change made before it runs
        self._mirror: _Mirror | None = None
        self._listeners: list[Callable[[Instance | None, Instance | None], None]] = []
        self._seen = 0  # the bucket's last revision the watch has delivered
        self._seen_waiters: list[tuple[int, asyncio.Future[None]]] = []

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects, clock: Callable[[], float],
                   create: bool = True) -> "InstanceStore":
        """Open the bucket and mirror it; `create=False` for a reader (the gateway's bus role may
        not create buckets: the bucket must exist, else nats.js.errors.BucketNotFoundError)."""
        js = nc.jetstream()
        if create:
            await ensure_streams(js, subjects)
        kv = await js.key_value(subjects.instances_bucket)
        store = cls(nc, js, kv, subjects, clock)
        await store._start()
        return store

    async def __aenter__(self) -> "InstanceStore":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- the mirror ----

    async def _start(self) -> None:
        self._mirror = await _Mirror.start(await self._kv.watchall(), self._apply, "instance-mirror")

    def _apply(self, entry: Any) -> None:
        self._saw(entry.revision or 0)
        key = entry.key
        old = self._records.get(key)
        if old is not None and old.revision >= entry.revision:
            return
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            if old is None:
                return
            self._put(key, old, None)
            self._notify(old.instance, None)
            return
        new = Versioned(_decode_instance(entry.value), entry.revision)
        self._put(key, old, new)
        self._notify(old.instance if old else None, new.instance)

    def _remember(self, key: str, versioned: Versioned | None, revision: int) -> None:
        """Read-your-writes: apply our own successful write to the mirror at once."""
        old = self._records.get(key)
        if old is not None and old.revision >= revision:
            return
        if versioned is None:
            if old is not None:
                self._put(key, old, None)
                self._notify(old.instance, None)
            return
        self._put(key, old, versioned)
        self._notify(old.instance if old else None, versioned.instance)

    def _put(self, key: str, old: Versioned | None, new: Versioned | None) -> None:
        """Replace `old` by `new` (None: gone) under `key`, in the records and in every index."""
        if old is not None:
            app = old.instance.app
            del self._by_app[app][key]
            if not self._by_app[app]:
                del self._by_app[app]
            if old.instance.state == "ready":
                self._ready[app].discard(old.instance)
            if old.instance.state == "claimed" and old.instance.browser:
                sessions = self._sessions[(app, old.instance.browser)]
                sessions.discard(key)
                if not sessions:
                    del self._sessions[(app, old.instance.browser)]
        if new is None:
            self._records.pop(key, None)
            return
        self._records[key] = new
        app = new.instance.app
        self._by_app.setdefault(app, {})[key] = new
        if new.instance.state == "ready":
            self._ready.setdefault(app, _ReadyOrder()).add(new.instance)
        if new.instance.state == "claimed" and new.instance.browser:
            self._sessions.setdefault((app, new.instance.browser), set()).add(key)

    def _notify(self, old: Instance | None, new: Instance | None) -> None:
        for listener in self._listeners:
            try:
                listener(old, new)
            except Exception:
                log.exception("instance listener failed")
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().create_task(self._wake())

    async def _wake(self) -> None:
        self._wake_pending = False  # a change from here on schedules its own wake-up
        async with self._changed:
            self._changed.notify_all()

    def _saw(self, revision: int) -> None:
        self._seen = max(self._seen, revision)
        for target, done in self._seen_waiters:
            if target <= self._seen and not done.done():
                done.set_result(None)
        self._seen_waiters = [(t, d) for t, d in self._seen_waiters if not d.done()]

    async def caught_up(self, timeout: float = 5.0) -> None:
        """Wait until the mirror holds every write the bucket had when called, other hosts' too: a
        decision that counts records (how many to start) then counts them all. TimeoutError if the
        watch lags that long."""
        info = await self._js.stream_info(f"KV_{self._subjects.instances_bucket}")
        target = info.state.last_seq
        if target <= self._seen:
            return
        done = asyncio.get_running_loop().create_future()
        self._seen_waiters.append((target, done))
        async with asyncio.timeout(timeout):  # not wait_for: it can swallow cancellation on 3.11
            await done

    def on_change(self, listener: Callable[[Instance | None, Instance | None], None]) -> Callable[[], None]:
        """Call `listener(old, new)` synchronously for every change the mirror sees; returns the
        function that stops it."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def wait_changed(self, timeout: float) -> bool:
        """Wait until the mirror changes, or the timeout passes (False)."""
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):  # not wait_for: it can swallow cancellation on 3.11
                    await self._changed.wait()
                return True
            except TimeoutError:
                return False

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    # ---- reads (from the mirror) ----

    def all(self, app: str | None = None) -> list[Instance]:
        """Every record, or those of one app (from its index: no walk over other apps' records)."""
        if app is None:
            return [v.instance for v in self._records.values()]
        return [v.instance for v in self._by_app.get(app, {}).values()]

    def oldest_ready(self, app: str, skip: Collection[str] = ()) -> Versioned | None:
        """The ready record of `app` that has been ready longest (then by id), keys in `skip` passed over."""
        order = self._ready.get(app)
        key = order.first(skip) if order is not None else None
        return self._records.get(key) if key is not None else None

    def ready(self, app: str) -> list[Instance]:
        """The ready records of `app`, the longest ready first (the index's order: no sort)."""
        order = self._ready.get(app)
        return [self._records[key].instance for key in order.keys()] if order is not None else []

    def sessions(self, app: str, browser: str) -> list[Instance]:
        """The claimed records of `app` one browser holds (any order)."""
        keys = self._sessions.get((app, browser), ()) if browser else ()
        return [self._records[key].instance for key in keys]

    def get(self, app: str, instance_id: str) -> Versioned | None:
        return self._records.get(f"{app}.{instance_id}")

    async def fetch(self, app: str, instance_id: str) -> Versioned | None:
        """Read one record from KV itself, bypassing the mirror."""
        try:
            entry = await self._kv.get(f"{app}.{instance_id}")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value:
            return None
        return Versioned(_decode_instance(entry.value), entry.revision or 0)

    # ---- writes (CAS) ----

    async def create(self, instance: Instance) -> Versioned:
        """Add a new record; fails with Conflict if the key exists."""
        try:
            revision = await self._kv.create(instance.key, _encode(instance))
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise Conflict(instance.short) from err  # the key holds the id: a capability, never logged
        versioned = Versioned(instance, revision)
        self._remember(instance.key, versioned, revision)
        await self._event(instance, EventKind.CREATED)
        return versioned

    async def cas(self, current: Versioned, new: Instance, event: EventKind | None = None) -> Versioned:
        """Replace `current` by `new` iff the record is still at `current.revision`."""
        old = current.instance
        if new.state not in TRANSITIONS[old.state]:
            raise InvalidTransition(f"{old.short}: {old.state} -> {new.state}")
        try:
            revision = await self._kv.update(new.key, _encode(new), last=current.revision)
        except nats.js.errors.KeyWrongLastSequenceError as err:
            raise Conflict(new.short) from err  # the key holds the id: a capability, never logged
        versioned = Versioned(new, revision)
        self._remember(new.key, versioned, revision)
        if new.state != old.state:
            await self._event(new, event or EventKind(new.state))
        return versioned

    async def update(self, app: str, instance_id: str,
                     change: Callable[[Instance], Instance | None],
                     event: EventKind | None = None, attempts: int = 8) -> Versioned | None:
        """Read-modify-CAS with retries; `change` returns None to leave the record alone."""
        for attempt in range(attempts):
            if attempt > 1:  # writers in a flood (heartbeats of several gateways): back off apart, not in step
                await asyncio.sleep(random.uniform(0, 0.002 * 2 ** attempt))
            current = self.get(app, instance_id) or await self.fetch(app, instance_id)
            if current is None:
                return None
            new = change(current.instance)
            if new is None:
                return current
            try:
                return await self.cas(current, new, event)
            except Conflict:
                fresh = await self.fetch(app, instance_id)
                if fresh is None:
                    return None
                self._remember(fresh.instance.key, fresh, fresh.revision)
        raise Conflict(f"{short_id(app, instance_id)}: gave up after {attempts} attempts")

    async def delete(self, instance: Instance, reason: str = "") -> None:
        """Remove a record for good (after its service is gone)."""
        await self._kv.delete(instance.key)
        self._remember(instance.key, None, 1 << 62)
        await self._event(instance, EventKind.REMOVED, reason or instance.reason)

    async def _event(self, instance: Instance, event: EventKind, reason: str | None = None) -> None:
        event = EventKind(event)  # a kind nobody knows is a bug here, not a silent new subject
        message = InstanceEvent(app=instance.app, id=instance.id, event=event, state=instance.state,
                                at=self._clock(), reason=instance.reason if reason is None else reason)
        await self._nc.publish(self._subjects.instance_event(instance.app, instance.id, event),
                               _encode(message))


class ConfigStore:
    """Operator overrides of the catalogue (admin scale/pause), one KV key per app, mirrored.
    Every write is a compare-and-set on the key's revision, like the instance records: two hosts
    handling a `pause` and a `scale` at once both take effect."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._overrides: dict[str, tuple[PoolOverride, int]] = {}  # app -> (override, revision)
        self._mirror: _Mirror | None = None
        self._trust: tuple[EngineTrust, int] = (EngineTrust(), 0)  # and its revision
        self._trust_changed = asyncio.Condition()

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects) -> "ConfigStore":
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        store = cls(await js.key_value(subjects.config_bucket))
        # pool.<app> overrides and engine.trust
        store._mirror = await _Mirror.start(await store._kv.watchall(), store._apply, "config-mirror")
        return store

    @property
    def kv(self) -> KeyValue:
        """The config bucket itself (lecture links keep their records there: bus/links.py)."""
        return self._kv

    def _apply(self, entry: Any) -> None:
        if entry.key == TRUST_KEY:
            self._learn_trust(entry)
            return
        if not entry.key.startswith("pool."):
            return
        app = entry.key.split(".", 1)[1]
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            self._overrides.pop(app, None)
            return
        try:
            self._learn(app, _decode_override(entry.value), entry.revision or 0)
        except msgspec.DecodeError:
            log.warning("ignoring malformed pool override for %s", app)

    def _learn(self, app: str, override: PoolOverride, revision: int) -> None:
        known = self._overrides.get(app)
        if known is None or known[1] < revision:
            self._overrides[app] = (override, revision)

    def cached(self, app: str) -> PoolOverride:
        """The override for `app` as last seen (no round trip)."""
        known = self._overrides.get(app)
        return known[0] if known else PoolOverride(app=app)

    async def update(self, app: str, change: Callable[[PoolOverride], PoolOverride],
                     attempts: int = 8) -> PoolOverride:
        """Read-modify-CAS of one app's override, retried on a concurrent write."""
        known = self._overrides.get(app)

        async def read() -> tuple[PoolOverride, int]:
            return known if known else (PoolOverride(app=app), 0)

        async def refresh() -> None:
            nonlocal known
            known = await self._fetch(app)

        new, revision, _ = await read_modify_cas(self._kv, f"pool.{app}", read, change, refresh=refresh,
                                                 attempts=attempts, what=f"pool override of {app}")
        self._learn(app, new, revision)
        return new

    async def _fetch(self, app: str) -> tuple[PoolOverride, int] | None:
        try:
            entry = await self._kv.get(f"pool.{app}")
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value or entry.revision is None:
            return None
        fetched = (_decode_override(entry.value), entry.revision)
        self._learn(app, *fetched)
        return fetched

    # ---- trust in the engine (see EngineTrust) ----

    def _learn_trust(self, entry: Any) -> None:
        try:
            trust = _decode_trust(entry.value) if entry.value else EngineTrust()
        except msgspec.DecodeError:
            log.warning("ignoring a malformed %s", TRUST_KEY)
            return
        if (entry.revision or 0) > self._trust[1]:
            self._set_trust(trust, entry.revision or 0)

    def _set_trust(self, trust: EngineTrust, revision: int) -> None:
        before = self.trusted()
        self._trust = (trust, revision)
        if self.trusted() != before:
            log.warning("pool %s", "trusted again: reconciled with the engine" if self.trusted()
                        else f"not trusted until reconciled with the engine ({trust.reason})")
        asyncio.get_running_loop().create_task(self._wake_trust())

    async def _wake_trust(self) -> None:
        async with self._trust_changed:
            self._trust_changed.notify_all()

    def trust(self) -> EngineTrust:
        """The engine trust as last seen (no round trip)."""
        return self._trust[0]

    def trusted(self) -> bool:
        """Whether claims may trust the records: a full reconcile has run since the last gap."""
        return self._trust[0].trusted

    async def wait_trusted(self, timeout: float) -> bool:
        """Wait (at most `timeout` seconds) until the pool is trusted; whether it is."""
        async with self._trust_changed:
            try:
                async with asyncio.timeout(max(timeout, 0.0)):
                    await self._trust_changed.wait_for(self.trusted)
            except TimeoutError:
                pass
        return self.trusted()

    async def mark_gap(self, reason: str) -> EngineTrust:
        """The engine was out of sight: claims wait until a reconcile pass that starts after now."""
        return await self._change_trust(lambda t: msgspec.structs.replace(t, gap=t.gap + 1, reason=reason))

    async def mark_reconciled(self, gap: int) -> None:
        """A full reconcile pass that started when `gap` was the last gap has finished."""
        if self._trust[0].reconciled < gap:
            await self._change_trust(lambda t: msgspec.structs.replace(t, reconciled=max(t.reconciled, gap))
                                     if t.reconciled < gap else None)

    async def _change_trust(self, change: Callable[[EngineTrust], EngineTrust | None],
                            attempts: int = 8) -> EngineTrust:
        async def read() -> tuple[EngineTrust, int]:
            return self._trust

        async def refresh() -> None:
            try:
                self._learn_trust(await self._kv.get(TRUST_KEY))
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                pass

        new, revision, written = await read_modify_cas(self._kv, TRUST_KEY, read, change, refresh=refresh,
                                                       attempts=attempts)
        if written and revision > self._trust[1]:
            self._set_trust(new, revision)
        return new

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()


def catalogue_version(text: str, calendars: Mapping[str, str] | None = None) -> str:
    """A short digest of a catalogue file's text and of the calendar files it names: hosts on one version run
    one catalogue (without calendars, the digest of the text alone, as before they existed)."""
    digest = hashlib.sha256(text.encode())
    for name in sorted(calendars or {}):
        digest.update(b"\0calendar\0" + name.encode() + b"\0" + (calendars or {})[name].encode())
    return digest.hexdigest()[:12]


def catalogue_file(text: str, source: str, at: float, by: Requester | None = None,
                   calendars: Mapping[str, str] | None = None) -> CatalogueFile:
    """The record of one catalogue file (with the calendar files it names) as stored for every host to follow."""
    return CatalogueFile(text=text, source=source, version=catalogue_version(text, calendars), at=at,
                         by=by or Requester(), calendars=dict(calendars or {}))


class CatalogueStore:
    """The loaded catalogue (key ``catalogue`` of the config bucket), followed by every functions host
    and gateway: `up` publishes the file it started with, `admin reload` a new one. Reads need only
    read access to the bucket (the gateway role); writes are the functions role's."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._current: tuple[CatalogueFile, int] | None = None
        self._listeners: list[Callable[[CatalogueFile], None]] = []
        self._mirror: _Mirror | None = None

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects) -> "CatalogueStore":
        """Follow the key (the bucket must exist: the functions create it)."""
        store = cls(await nc.jetstream().key_value(subjects.config_bucket))
        store._mirror = await _Mirror.start(await store._kv.watch(CATALOGUE_KEY), store._apply,
                                            "catalogue-mirror")
        return store

    def _apply(self, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            return
        try:
            self._learn(_decode_catalogue(entry.value), entry.revision or 0)
        except msgspec.DecodeError:
            log.warning("ignoring a malformed %s", CATALOGUE_KEY)

    def _learn(self, file: CatalogueFile, revision: int) -> None:
        if self._current is not None and self._current[1] >= revision:
            return
        self._current = (file, revision)
        for listener in self._listeners:
            try:
                listener(file)
            except Exception:
                log.exception("catalogue listener failed")

    def current(self) -> CatalogueFile | None:
        """The catalogue as last seen (no round trip); None before anyone published one."""
        return self._current[0] if self._current else None

    def on_change(self, listener: Callable[[CatalogueFile], None]) -> None:
        """Call `listener(file)` for every newer catalogue seen from now on."""
        self._listeners.append(listener)

    async def publish(self, file: CatalogueFile, *, only_if_absent: bool = False) -> bool:
        """Store `file` as the catalogue every host follows (a CAS on the revision last seen, retried);
        with `only_if_absent`, only when none is stored yet. Whether it was stored."""
        async def read() -> tuple[CatalogueFile | None, int]:
            return self._current or (None, 0)

        async def refresh() -> None:
            try:
                entry = await self._kv.get(CATALOGUE_KEY)
                if entry.value and entry.revision:
                    self._learn(_decode_catalogue(entry.value), entry.revision)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                pass

        def change(stored: CatalogueFile | None) -> CatalogueFile | None:
            return None if stored is not None and only_if_absent else file

        _, revision, written = await read_modify_cas(self._kv, CATALOGUE_KEY, read, change, refresh=refresh)
        if written:
            self._learn(file, revision)
        return written

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()


class Lease:
    """A singleton lease in the leases bucket (keys expire after 15 s unless renewed)."""

    def __init__(self, kv: KeyValue, name: str, holder: str) -> None:
        self._kv = kv
        self.name = name
        self.holder = holder
        self._revision: int | None = None

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects, name: str, holder: str) -> "Lease":
        js = nc.jetstream()
        await ensure_streams(js, subjects)
        return cls(await js.key_value(subjects.leases_bucket), name, holder)

    async def acquire_or_renew(self) -> bool:
        """True while we hold the lease."""
        try:
            if self._revision is None:
                self._revision = await self._kv.create(self.name, self.holder.encode())
            else:
                self._revision = await self._kv.update(self.name, self.holder.encode(), last=self._revision)
            return True
        # held by another; or (not found) freed between the two steps of nats-py's create
        except (nats.js.errors.KeyWrongLastSequenceError, nats.js.errors.KeyNotFoundError):
            self._revision = None
            return await self._take_back()

    async def _take_back(self) -> bool:
        """A lease still held in our own name is ours from before a crash (holder names that
        outlive a process are unique per namespace, e.g. the one `swarmpool up`): take it back
        at once instead of waiting for it to expire."""
        try:
            entry = await self._kv.get(self.name)
            if entry.value != self.holder.encode() or entry.revision is None:
                return False
            self._revision = await self._kv.update(self.name, self.holder.encode(), last=entry.revision)
            return True
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError,
                nats.js.errors.KeyWrongLastSequenceError):
            return False

    async def release(self) -> None:
        if self._revision is not None:
            try:
                await self._kv.delete(self.name, last=self._revision)
            except Exception:
                pass
            self._revision = None


MUTEX_POLL = 0.01  # seconds between two tries to take a held mutex


class Mutex:
    """A lock across hosts for one short critical section: a `Lease` in a holder name of its own,
    taken once and let go; a holder that dies frees it when its key expires (the bucket's 15 s)."""

    def __init__(self, kv: KeyValue, name: str) -> None:
        self._kv = kv
        self.name = name

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects, name: str) -> "Mutex":
        return cls(await nc.jetstream().key_value(subjects.leases_bucket), name)

    @asynccontextmanager
    async def held(self, timeout: float = 20.0) -> AsyncIterator[None]:
        lease = Lease(self._kv, self.name, uuid.uuid4().hex)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await lease.acquire_or_renew():
            if loop.time() > deadline:
                raise TimeoutError(f"the {self.name} mutex stayed held for {timeout:.0f} s")
            await asyncio.sleep(MUTEX_POLL)
        try:
            yield
        finally:
            await lease.release()  # if that fails (expired, connection gone), the TTL frees it
