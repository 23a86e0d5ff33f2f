"""The handler runtime: a declarative registry, typed decoding at the edge, one error boundary.

Each file in ``functions/`` declares its handlers on a ``Handlers`` table; the runtime
subscribes them (in a queue group, so several hosts share the work), decodes every message
into its Struct before the handler sees it, and catches, logs, counts and answers every
failure in one place. A malformed message is logged, counted and dropped; it never stops
the loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

import msgspec
from nats.aio.msg import Msg

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import ErrorReply
from swarmpool.bus.metrics import HostMetrics
from swarmpool.bus.spec import AppSpec, Catalogue, Settings
from swarmpool.bus.state import CatalogueStore, ConfigStore, InstanceStore, Lease, Mutex
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.subjects import QUEUE_FUNCTIONS, Subjects
from swarmpool.bus.wire import count_drops, encode, log_safe, subscribed

if TYPE_CHECKING:
    from swarmpool.swarm.port import SwarmPort

log = logging.getLogger(__name__)

T = TypeVar("T")
S = TypeVar("S")
LEASE_RENEW = 3.0  # seconds between renewals of a singleton's lease (the lease expires after 15 s)
PENDING_LIMIT = 4096  # messages a subscription buffers while its handlers are all busy; then dropped
STOP_TIMEOUT = 10.0  # seconds the runtime waits for its tasks to stop


@dataclass
class Context:
    """Everything a handler may touch, as ports (the bus, the stores, the swarm); handed in, never global."""

    bus: Bus  # publish and request; the raw client stays in bus/ (the runtime subscribes through it)
    subjects: Subjects
    store: InstanceStore
    config: ConfigStore
    catalogue: Catalogue
    swarm: SwarmPort  # functions reach Docker only through this port
    clock: Callable[[], float] = time.time
    namespace: str = "sp"
    host: str = "local"
    metrics: HostMetrics = field(default_factory=HostMetrics)
    states: dict[type, Any] = field(default_factory=dict)
    # the catalogue on the bus: `catalogue` is swapped when a reload stores a new one (None: no reload here)
    catalogues: CatalogueStore | None = None
    catalogue_version: str = ""

    async def publish(self, subject: str, message: Any) -> None:
        await self.bus.client.publish(subject, encode(message))  # nats' own errors, as before Bus wrapped them

    async def mutex(self, name: str) -> Mutex:
        """A cluster-wide mutex of this namespace (the top-up lock)."""
        return await Mutex.open(self.bus.client, self.subjects, name)

    async def open_tickets(self) -> TicketStore:
        """The queue bucket, mirrored (the caller closes it)."""
        return await TicketStore.open(self.bus.client, self.subjects)

    def app(self, name: str) -> AppSpec | None:
        return self.catalogue.apps.get(name)

    @property
    def settings(self) -> Settings:
        return self.catalogue.settings

    def state(self, kind: type[S]) -> S:
        """This host's private state of one function (declared on its Handlers table)."""
        found = self.states.get(kind)
        if found is None:
            found = self.states[kind] = kind()
        return cast(S, found)

    async def isolated(self, step: str, work: Awaitable[Any]) -> None:
        """Run one item of a pass; a failure is logged and counted, and the pass goes on."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.metrics.item_errors.labels(step).inc()
            log.warning("%s failed: %s: %s", step, type(err).__name__, err)

    async def each(self, step: str, works: Iterable[Awaitable[Any]]) -> None:
        """Run the items of a pass concurrently, each isolated (see `isolated`)."""
        await asyncio.gather(*(self.isolated(step, w) for w in works))


Handler = Callable[[Context, Any], Awaitable[Any]]
Background = Callable[[Context], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Subscription(Generic[T]):
    """One declared handler: which subject, which message type, whether it answers."""

    subject: Callable[[Subjects], str]
    type: type[T]
    handler: Handler
    queue: bool = True  # share the work with other hosts (False: every host sees every message)
    reply: bool = False
    concurrency: int = 64
    skip_when_busy: bool = False  # drop (not queue) a message that finds `concurrency` already running
    # the exact subject this message may arrive on; anything else is refused (the subject is what
    # bus permissions protect, so facts are carried in messages and checked against it)
    expected_subject: Callable[[Subjects, T], str] | None = None


@dataclass(frozen=True)
class Singleton:
    """A long-running body that runs on one host at a time, while that host holds a lease."""

    lease: str
    body: Background


class Handlers:
    """A table of handlers for one function, collected at import, started by the Runtime."""

    def __init__(self, state: type | None = None) -> None:
        self.subscriptions: list[Subscription[Any]] = []
        self.background: list[Background] = []
        self.singletons: list[Singleton] = []
        self.state = state  # the function's per-host state: the runtime builds one per host

    def on(self, subject: Callable[[Subjects], str], type_: type[T], *, queue: bool = True,
           reply: bool = False, concurrency: int = 64, skip_when_busy: bool = False,
           expect: Callable[[Subjects, T], str] | None = None) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.subscriptions.append(Subscription(subject, type_, handler, queue, reply, concurrency,
                                                   skip_when_busy, expect))
            return handler
        return register

    def task(self, body: Background) -> Background:
        """A long-running coroutine owned by the runtime (restarted if it fails), on every host."""
        self.background.append(body)
        return body

    def singleton(self, lease: str) -> Callable[[Background], Background]:
        """A long-running coroutine that runs on one host only (the clock, the engine watcher)."""
        def register(body: Background) -> Background:
            self.singletons.append(Singleton(lease, body))
            return body
        return register


class Runtime:
    """Subscribes handler tables, owns their tasks, drains and stops them."""

    def __init__(self, ctx: Context, tables: list[Handlers]) -> None:
        self.ctx = ctx
        self.tables = tables
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "Runtime":
        for table in self.tables:
            if table.state is not None:
                self.ctx.states.setdefault(table.state, table.state())
        for table in self.tables:
            for sub in table.subscriptions:
                await self._subscribe(sub)
            for body in table.background:
                self._spawn(self._guard(body.__name__, functools.partial(body, self.ctx)), name=body.__name__)
            for single in table.singletons:
                self._spawn(self._guard(single.body.__name__, functools.partial(self._hold, single)),
                            name=single.body.__name__)
        if any(table.subscriptions for table in self.tables):
            await subscribed(self.ctx.bus.client)  # ready means the server routes to us
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()  # unsubscribe first: no new work
        pending = set(self._tasks)
        deadline = asyncio.get_running_loop().time() + STOP_TIMEOUT
        while pending:
            # cancel again each round: on 3.11 a cancel that meets a completing wait_for (nats-py's
            # requests use one) can be swallowed, and the task would run on
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if pending and asyncio.get_running_loop().time() > deadline:
                log.warning("%d tasks did not stop: %s", len(pending), ", ".join(t.get_name() for t in pending))
                break

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Background tasks restart after a failure (with a pause) instead of dying quietly."""
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.ctx.metrics.handler_errors.labels(name).inc()
                log.exception("background task %s failed; restarting in 1 s", name)
                await asyncio.sleep(1)

    async def _hold(self, single: Singleton) -> None:
        """Run `single.body` while this host holds its lease; stop it as soon as the lease is lost."""
        lease = await Lease.open(self.ctx.bus.client, self.ctx.subjects, single.lease, self.ctx.host)
        try:
            while True:
                if not await lease.acquire_or_renew():
                    await asyncio.sleep(LEASE_RENEW)
                    continue
                log.info("%s: this host holds the %s lease", self.ctx.host, single.lease)
                body = asyncio.create_task(single.body(self.ctx), name=single.body.__name__)
                try:
                    while True:
                        done, _ = await asyncio.wait({body}, timeout=LEASE_RENEW)
                        if done:
                            body.result()  # re-raise a failure: the guard restarts us
                            return
                        if not await lease.acquire_or_renew():
                            log.warning("%s: lost the %s lease", self.ctx.host, single.lease)
                            break
                finally:
                    body.cancel()
                    await asyncio.gather(body, return_exceptions=True)
        finally:
            await lease.release()

    async def _subscribe(self, sub: Subscription[Any]) -> None:
        decoder = msgspec.json.Decoder(sub.type)
        limit = asyncio.Semaphore(sub.concurrency)
        name = sub.handler.__module__.rsplit(".", 1)[-1] + "." + sub.handler.__name__
        subject = sub.subject(self.ctx.subjects)

        async def handle(msg: Msg) -> None:
            try:
                await self._handle(msg, decoder, sub, name)
            finally:
                limit.release()

        async def on_message(msg: Msg) -> None:
            # a task is created only once a slot is free: a flood waits in the subscription's
            # bounded pending queue (and is dropped there by the client), never as a pile of tasks
            if sub.skip_when_busy and limit.locked():
                self.ctx.metrics.dropped.labels(name, "busy").inc()  # e.g. a tick while the last pass runs
                return
            await limit.acquire()
            self._spawn(handle(msg), name=name)

        nsub = await self.ctx.bus.client.subscribe(subject, queue=QUEUE_FUNCTIONS + "." + self.ctx.namespace
                                           if sub.queue else "", cb=on_message,
                                           pending_msgs_limit=PENDING_LIMIT)
        count_drops(nsub, self.ctx.metrics.dropped.labels(name, "slow_consumer").inc)
        self._stack.push_async_callback(nsub.unsubscribe)

    async def _handle(self, msg: Msg, decoder: msgspec.json.Decoder[Any], sub: Subscription[Any],
                      name: str) -> None:
        """The one error boundary: decode, call, answer; log, count and answer every failure."""
        try:
            message = decoder.decode(msg.data)
        except msgspec.DecodeError as err:
            self.ctx.metrics.malformed.labels(name).inc()
            log.warning("%s: dropped malformed message on %s: %s", name, log_safe(msg.subject), err)
            await self._answer(msg, sub, ErrorReply(error="malformed", detail=str(err)))
            return
        if sub.expected_subject is not None and not self._matches(sub, message, msg.subject):
            self.ctx.metrics.dropped.labels(name, "mismatch").inc()
            log.warning("%s: refused a message that contradicts its subject %s", name, log_safe(msg.subject))
            await self._answer(msg, sub, ErrorReply(error="subject_mismatch",
                                                    detail="the message does not match its subject"))
            return
        try:
            result = await sub.handler(self.ctx, message)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.ctx.metrics.handler_errors.labels(name).inc()
            log.exception("%s failed on %s", name, log_safe(msg.subject))
            await self._answer(msg, sub, ErrorReply(error="internal", detail=type(err).__name__))
            return
        if sub.reply and result is not None:
            await self._answer(msg, sub, result)

    def _matches(self, sub: Subscription[Any], message: Any, subject: str) -> bool:
        assert sub.expected_subject is not None
        try:
            return sub.expected_subject(self.ctx.subjects, message) == subject
        except ValueError:  # a fact that no subject can carry
            return False

    async def _answer(self, msg: Msg, sub: Subscription[Any], reply: Any) -> None:
        if sub.reply and msg.reply:
            try:
                await msg.respond(encode(reply))
            except Exception:
                log.exception("could not answer on %s", log_safe(msg.subject))
