"""Typed application state shared by the gateway's handlers."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import aiohttp
import msgspec
from aiohttp import web

from swarmpool.bus.client import Bus
from swarmpool.bus.links import KeysMirror
from swarmpool.bus.messages import Claimed, ClaimRefused, ErrorReply, Queued, Released
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway.activity import ActivityTracker
from swarmpool.gateway.metrics import GatewayMetrics
from swarmpool.gateway.queue import QueueView
from swarmpool.gateway.routing import RouteTable
from swarmpool.gateway.static_cache import StaticCache
from swarmpool.gateway.visits import VisitLog


@dataclass
class Gateway:
    """Everything a gateway handler may touch."""

    bus: Bus
    subjects: Subjects
    store: InstanceStore
    catalogue: Catalogue
    host_label: str
    routes: RouteTable
    activity: ActivityTracker
    metrics: GatewayMetrics
    visits: VisitLog  # clicks and page loads, into the event log (the report)
    claim_decoder: msgspec.json.Decoder[Claimed | ClaimRefused | Queued | ErrorReply] = field(
        default_factory=lambda: msgspec.json.Decoder(Claimed | ClaimRefused | Queued | ErrorReply))
    release_decoder: msgspec.json.Decoder[Released | ErrorReply] = field(
        default_factory=lambda: msgspec.json.Decoder(Released | ErrorReply))
    open_sockets: dict[str, set[web.WebSocketResponse]] = field(default_factory=dict)  # id -> client sockets
    background: set[asyncio.Task[object]] = field(default_factory=set)  # fire-and-forget closes
    static: StaticCache | None = None  # the shared static cache (made on first use, sized by the settings)
    catalogue_version: str = ""
    link_keys: KeysMirror | None = None  # lecture links' signing keys (None: no link verifies)
    queue: QueueView | None = None  # the queues (None: no queue bucket: the waiting room that retries, as before)

    def use(self, catalogue: Catalogue, version: str) -> None:
        """Follow a reloaded catalogue (listener settings, like timeouts, keep their values until restart)."""
        self.catalogue, self.catalogue_version = catalogue, version
        self.routes.use(catalogue)


# The browser id (random, HttpOnly): the per-browser session limit counts by it. It is the
# gateway's own: never forwarded to an instance. Over HTTPS it is `__Host-sp_browser` (Secure,
# Path=/, no Domain): the browser takes it only from the gateway's own host, so no page on another
# host (an instance's `<label>.<instance_domain>`) can plant one; over plain HTTP, `sp_browser`
# with Path=/launch/.
BROWSER_COOKIE = "sp_browser"
HTTPS_BROWSER_COOKIE = "__Host-sp_browser"

GATEWAY = web.AppKey("gateway", Gateway)
UPSTREAM = web.AppKey("upstream_session", aiohttp.ClientSession)


def wants_json(request: web.Request) -> bool:
    """API clients ask for JSON; browsers send text/html first."""
    accept = request.headers.get("Accept", "")
    return "application/json" in accept and "text/html" not in accept
