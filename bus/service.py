"""A `nats.micro` service from a table of typed endpoints: decoding at the edge, one error boundary,
typed replies and typed errors, and NATS service discovery (``$SRV.PING|INFO|STATS``) for free.

Every host runs one instance of the service; micro subscribes each endpoint in a queue group,
so one of them answers each request.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import msgspec
from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service

from swarmpool.bus.messages import ErrorReply
from swarmpool.bus.metrics import HostMetrics
from swarmpool.bus.wire import encode, log_safe_text, subscribed

log = logging.getLogger(__name__)

# typed error -> the micro error code in the reply's Nats-Service-Error-Code header
ERROR_CODES = {"bad_request": "400", "malformed": "400", "bad_catalogue": "400", "unavailable": "503",
               "unknown_app": "404", "unknown_instance": "404", "unknown_link": "404",
               "ambiguous": "409", "internal": "500"}


@dataclass(frozen=True)
class Endpoint:
    """One endpoint: its name, subject, request Struct and what answers it (a Struct or an ErrorReply)."""

    name: str
    subject: str
    request: type[Any]
    handle: Callable[[Any], Awaitable[Any]]
    description: str = ""


@asynccontextmanager
async def serve(nc: NATS, *, name: str, version: str, description: str, endpoints: list[Endpoint],
                metrics: HostMetrics, queue: str, metadata: dict[str, str] | None = None) -> AsyncIterator[Service]:
    """Run the service until the block exits (then its subscriptions are drained)."""
    service = await add_service(nc, name=name, version=version, description=description,
                                metadata=metadata or {}, queue_group=queue)
    try:
        for endpoint in endpoints:
            await service.add_endpoint(name=endpoint.name, subject=endpoint.subject,
                                       handler=_handler(endpoint, metrics),
                                       metadata={"description": endpoint.description})
        await subscribed(nc)  # ready means requests reach us
        yield service
    finally:
        await service.stop()


def _handler(endpoint: Endpoint, metrics: HostMetrics) -> Callable[[Request], Awaitable[None]]:
    decoder = msgspec.json.Decoder(endpoint.request)
    label = f"admin.{endpoint.name}"

    async def handle(request: Request) -> None:
        try:
            message = decoder.decode(request.data or b"{}")
        except msgspec.DecodeError as err:
            metrics.malformed.labels(label).inc()
            log.warning("%s: refused a malformed request: %s", label, err)
            await _error(request, ErrorReply(error="malformed", detail=str(err)))
            return
        try:
            reply = await endpoint.handle(message)
        except Exception as err:
            metrics.handler_errors.labels(label).inc()
            log.exception("%s failed", label)
            reply = ErrorReply(error="internal", detail=log_safe_text(f"{type(err).__name__}: {err}"))
        if isinstance(reply, ErrorReply):
            await _error(request, reply)
        else:
            await request.respond(encode(reply))

    return handle


async def _error(request: Request, reply: ErrorReply) -> None:
    """A typed error in the body, and micro's error headers for generic clients (`nats micro`, `nats req`)."""
    await request.respond_error(ERROR_CODES.get(reply.error, "400"), f"{reply.error}: {reply.detail}"[:200],
                                data=encode(reply))
