"""The handler runtime: a declarative registry, typed decoding at the edge, one error boundary.

Each file in ``functions/`` declares its handlers on a ``Handlers`` table; the runtime
subscribes them (in a queue group, so several hosts share the work), decodes every message
into its Struct before the handler sees it, and catches, logs, counts and answers every
failure in one place. A malformed message is logged, counted and dropped; it never stops
the loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from swarmpool.bus.messages import ErrorReply
from swarmpool.bus.spec import AppSpec, Catalogue, Settings, enc_hook
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import QUEUE_FUNCTIONS, Subjects

log = logging.getLogger(__name__)

T = TypeVar("T")
_encoder = msgspec.json.Encoder(enc_hook=enc_hook)


def encode(message: Any) -> bytes:
    """The one wire format of the bus: JSON via msgspec."""
    return _encoder.encode(message)


async def connect(url: str, name: str = "swarmpool") -> NATS:
    """Connect to NATS, failing fast (ConnectionError) if no server answers now; later outages are
    reconnected forever. (nats-py would otherwise retry the first connect for minutes.)"""
    import nats
    from urllib.parse import urlparse

    for server in url.split(","):
        parsed = urlparse(server.strip() if "://" in server else f"nats://{server.strip()}")
        try:
            async with asyncio.timeout(3):
                _, writer = await asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 4222)
            writer.close()
            break
        except (OSError, TimeoutError):
            continue
    else:
        raise ConnectionError(f"no NATS server answers at {url}")

    async def on_error(err: Exception) -> None:
        log.warning("nats: %s", err)

    return await nats.connect(url, name=name, connect_timeout=5, max_reconnect_attempts=-1,
                              error_cb=on_error)


class Counters:
    """Process-local counters (exported by the gateway's /metrics and by admin status)."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}

    def inc(self, name: str, label: str = "") -> None:
        self.values[(name, label)] = self.values.get((name, label), 0) + 1

    def get(self, name: str, label: str = "") -> int:
        return self.values.get((name, label), 0)


@dataclass
class Context:
    """Everything a handler may touch; handed in, never global."""

    nc: NATS
    subjects: Subjects
    store: InstanceStore
    config: ConfigStore
    catalogue: Catalogue
    swarm: Any  # swarm.Swarm (functions reach Docker only through it)
    clock: Callable[[], float] = time.time
    namespace: str = "sp"
    host: str = "local"
    counters: Counters = field(default_factory=Counters)
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    probing: set[str] = field(default_factory=set)  # instance keys this host is probing
    claiming: set[str] = field(default_factory=set)  # instance keys a local claim is trying
    failures: dict[str, int] = field(default_factory=dict)  # app -> consecutive failed starts
    hold_starts_until: dict[str, float] = field(default_factory=dict)  # app -> backoff end
    start_slots: dict[str, asyncio.Semaphore] = field(default_factory=dict)
    refill_pending: set[str] = field(default_factory=set)  # apps with a coalesced top-up on its way

    async def publish(self, subject: str, message: Any) -> None:
        await self.nc.publish(subject, encode(message))

    def app(self, name: str) -> AppSpec | None:
        return self.catalogue.apps.get(name)

    @property
    def settings(self) -> Settings:
        return self.catalogue.settings

    def lock(self, name: str) -> asyncio.Lock:
        """A per-process lock by name (e.g. one per app, so top-ups of an app never interleave)."""
        return self.locks.setdefault(name, asyncio.Lock())


Handler = Callable[[Context, Any, str], Awaitable[Any]]
Background = Callable[[Context], Awaitable[None]]


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


class Handlers:
    """A table of handlers for one function, collected at import, started by the Runtime."""

    def __init__(self) -> None:
        self.subscriptions: list[Subscription[Any]] = []
        self.background: list[Background] = []

    def on(self, subject: Callable[[Subjects], str], type_: type[T], *, queue: bool = True,
           reply: bool = False, concurrency: int = 64,
           skip_when_busy: bool = False) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.subscriptions.append(Subscription(subject, type_, handler, queue, reply, concurrency,
                                                   skip_when_busy))
            return handler
        return register

    def task(self, body: Background) -> Background:
        """A long-running coroutine (the clock, the swarm watcher) owned by the runtime."""
        self.background.append(body)
        return body


class Runtime:
    """Subscribes handler tables, owns their tasks, drains and stops them."""

    def __init__(self, ctx: Context, tables: list[Handlers]) -> None:
        self.ctx = ctx
        self.tables = tables
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stack = AsyncExitStack()

    async def __aenter__(self) -> "Runtime":
        for table in self.tables:
            for sub in table.subscriptions:
                await self._subscribe(sub)
            for body in table.background:
                self._spawn(self._guard(body), name=getattr(body, "__name__", "task"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()  # unsubscribe first: no new work
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guard(self, body: Background) -> None:
        """Background tasks restart after a failure (with a pause) instead of dying quietly."""
        while True:
            try:
                await body(self.ctx)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.ctx.counters.inc("handler_errors_total", body.__name__)
                log.exception("background task %s failed; restarting in 1 s", body.__name__)
                await asyncio.sleep(1)

    async def _subscribe(self, sub: Subscription[Any]) -> None:
        decoder = msgspec.json.Decoder(sub.type)
        limit = asyncio.Semaphore(sub.concurrency)
        name = sub.handler.__module__.rsplit(".", 1)[-1] + "." + sub.handler.__name__
        subject = sub.subject(self.ctx.subjects)

        inflight = 0

        async def handle(msg: Msg) -> None:
            nonlocal inflight
            try:
                async with limit:
                    await self._handle(msg, decoder, sub, name)
            finally:
                inflight -= 1

        async def on_message(msg: Msg) -> None:
            nonlocal inflight
            if sub.skip_when_busy and inflight >= sub.concurrency:
                self.ctx.counters.inc("skipped_busy_total", name)  # e.g. a tick while the last pass runs
                return
            inflight += 1
            self._spawn(handle(msg), name=name)

        nsub = await self.ctx.nc.subscribe(subject, queue=QUEUE_FUNCTIONS + "." + self.ctx.namespace
                                           if sub.queue else "", cb=on_message)
        self._stack.push_async_callback(nsub.unsubscribe)

    async def _handle(self, msg: Msg, decoder: msgspec.json.Decoder[Any], sub: Subscription[Any],
                      name: str) -> None:
        """The one error boundary: decode, call, answer; log, count and answer every failure."""
        try:
            message = decoder.decode(msg.data)
        except msgspec.DecodeError as err:
            self.ctx.counters.inc("malformed_messages_total", name)
            log.warning("%s: dropped malformed message on %s: %s", name, msg.subject, err)
            await self._answer(msg, sub, ErrorReply(error="malformed", detail=str(err)))
            return
        try:
            result = await sub.handler(self.ctx, message, msg.subject)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self.ctx.counters.inc("handler_errors_total", name)
            log.exception("%s failed on %s", name, msg.subject)
            await self._answer(msg, sub, ErrorReply(error="internal", detail=type(err).__name__))
            return
        if sub.reply and result is not None:
            await self._answer(msg, sub, result)

    async def _answer(self, msg: Msg, sub: Subscription[Any], reply: Any) -> None:
        if sub.reply and msg.reply:
            try:
                await msg.respond(encode(reply))
            except Exception:
                log.exception("could not answer on %s", msg.subject)
