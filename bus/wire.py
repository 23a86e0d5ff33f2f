"""The wire of the bus: connecting to NATS, the one encoding, what logs may show of subjects, dropped messages.

Everything here is about the connection itself, below the handler runtime (``runtime.py``) and the
callers' facade (``client.py``): they encode with ``encode``, connect with ``connect`` and say
"ready" after ``subscribed``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from swarmpool.bus.roles import Access
from swarmpool.bus.spec import enc_hook
from swarmpool.ids import SHORT, valid_id

log = logging.getLogger(__name__)

_encoder = msgspec.json.Encoder(enc_hook=enc_hook)


def encode(message: Any) -> bytes:
    """The one wire format of the bus: JSON via msgspec."""
    return _encoder.encode(message)


async def subscribed(nc: NATS, timeout: float = 10.0) -> None:
    """Return once the server holds every subscription `nc` has made so far: from then on a publish
    from any connection reaches them. Call it before saying "ready".

    ``nc.flush()`` alone does not promise this: nats-py writes the PING of a flush straight to the
    socket, ahead of SUBs still waiting in its buffer for the flusher task, so the PONG may come
    back before the server has seen them. A request goes out through that buffer, behind the SUBs,
    and the server handles one connection's commands in order: its answer means they are in place.
    ``$JS.API.INFO`` is one the server answers itself and every role that subscribes may send (an
    error or "no responders" answer proves the same)."""
    import nats.errors

    try:
        await nc.request("$JS.API.INFO", b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        pass


async def connect(url: str, name: str = "swarmpool", *, access: Access | None = None,
                  inbox_prefix: str | None = None) -> NATS:
    """Connect to NATS, failing fast (ConnectionError) if no server answers now; later outages are
    reconnected forever. (nats-py would otherwise retry the first connect for minutes.)

    `access` logs in as one bus role (user/password or a .creds file; TLS for ``tls://`` URLs or
    given CA/certificate files); `inbox_prefix` is that role's (``Subjects.inbox``), the only
    inboxes its user may subscribe to. Messages a subscription drops because its handlers are
    behind (nats-py's slow consumer) are counted by the runtime that owns it, never buffered."""
    import nats
    import nats.errors
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
        if isinstance(err, nats.errors.SlowConsumerError):
            _slow_consumer(err.sub)
            return
        log.warning("nats: %s", log_safe_text(str(err)))

    options = access.options(url) if access is not None else {}
    if inbox_prefix:
        options["inbox_prefix"] = inbox_prefix
    servers = [server.strip() for server in url.split(",") if server.strip()]  # a cluster: every server's URL
    return await nats.connect(servers, name=name, connect_timeout=5, max_reconnect_attempts=-1,
                              error_cb=on_error, **options)


# what the runtime does when one of its subscriptions drops a message (count it), by subscription
_on_drop: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()
_drop_logged: dict[str, float] = {}
DROP_LOG_EVERY = 10.0  # seconds between two log lines about drops on one subject pattern


def _slow_consumer(sub: Any) -> None:
    """A subscription's pending queue was full: the message is dropped; count it, log now and then."""
    count = _on_drop.get(sub)
    if count is not None:
        count()
    subject = log_safe(str(getattr(sub, "subject", "?")))
    now = time.monotonic()
    if now - _drop_logged.get(subject, -DROP_LOG_EVERY) >= DROP_LOG_EVERY:
        _drop_logged[subject] = now
        log.warning("dropping messages on %s: its handlers are behind (counted in "
                    "swarmpool_messages_dropped_total{reason=\"slow_consumer\"})", subject)


def count_drops(sub: Any, count: Callable[[], None]) -> None:
    """Call `count` for each message the subscription `sub` drops (its pending queue was full)."""
    _on_drop[sub] = count


def log_safe(subject: str) -> str:
    """A subject as logs may show it: tokens that look like instance ids are cut to a prefix."""
    return ".".join(short_token(t) for t in subject.split("."))


def short_token(token: str) -> str:
    return token[:SHORT] + "…" if valid_id(token) else token


_ID_IN_TEXT = re.compile(r"(?<![a-z2-7])([a-z2-7]{%d})[a-z2-7]{%d}(?![a-z2-7])" % (SHORT, 26 - SHORT))


def log_safe_text(text: str) -> str:
    """Any text as logs may show it (a client error quoting a subject): id-like words cut to a prefix."""
    return _ID_IN_TEXT.sub(lambda m: m.group(1) + "…", text)
