"""The bus as its callers see it: publish a message, ask a question, know whether NATS is there.

Callers outside ``bus/`` (the gateway) use this facade and its exceptions, never nats itself;
messages go out in the one wire format of the bus (``wire.encode``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from swarmpool.bus.wire import encode

Publish = Callable[[str, Any], Awaitable[None]]
"""Something that publishes one message on a subject: `Bus.publish`, or a fake in unit tests."""


class BusError(Exception):
    """A publish or request did not go through (NATS down, closed, refused ...)."""


class NoResponders(BusError):
    """Nobody subscribes to the subject of a request: known at once, no timeout waited."""


class RequestTimeout(BusError):
    """A request got no reply within its timeout."""


class Bus:
    """A connected NATS client, seen through the few operations callers need."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc

    @property
    def client(self) -> NATS:
        """The raw client, for what lives in ``bus/`` too (the KV stores: ``InstanceStore.open``)."""
        return self._nc

    @property
    def is_connected(self) -> bool:
        return bool(self._nc.is_connected)

    async def publish(self, subject: str, message: Any) -> None:
        """Publish one message (a Struct) on `subject`."""
        try:
            await self._nc.publish(subject, encode(message))
        except nats.errors.Error as err:
            raise BusError(str(err) or type(err).__name__) from err

    async def request(self, subject: str, message: Any, timeout: float) -> bytes:
        """Send one request (a Struct) and return the raw reply, for the caller's typed decoder."""
        try:
            reply = await self._nc.request(subject, encode(message), timeout=timeout)
        except nats.errors.NoRespondersError as err:
            raise NoResponders(subject) from err
        except (nats.errors.TimeoutError, TimeoutError) as err:
            raise RequestTimeout(f"no reply on {subject} within {timeout:.1f} s") from err
        except nats.errors.Error as err:
            raise BusError(str(err) or type(err).__name__) from err
        return reply.data
