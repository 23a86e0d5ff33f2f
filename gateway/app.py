"""The gateway's aiohttp application: routes, typed state and the lifecycle of its resources."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web

from swarmpool.bus.client import Bus
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.spec import AppSpec, Catalogue
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import launch, origin, proxy
from swarmpool.gateway.activity import ActivityTracker
from swarmpool.gateway.visits import VisitLog
from swarmpool.gateway.context import GATEWAY, UPSTREAM, Gateway
from swarmpool.gateway.framing import apply_frame_policy
from swarmpool.gateway.metrics import GatewayMetrics
from swarmpool.gateway.queue import QueueView, RefillRate
from swarmpool.gateway.routing import RouteTable
from swarmpool.ids import instance_prefix, valid_id

log = logging.getLogger(__name__)

UPSTREAM_CONNECT_TIMEOUT = 10.0
SHUTDOWN_CLOSE_CODE = 1001  # going away
INSTANCE_ROUTE = instance_prefix("{id}")  # /i/{id}/: the layout comes from swarmpool.ids


def make_app(*, bus: Bus, subjects: Subjects, store: InstanceStore, catalogue: Catalogue,
             host_label: str = "gw", clock: Callable[[], float] = time.time,
             monotonic: Callable[[], float] = time.monotonic, tickets: TicketStore | None = None) -> web.Application:
    """The gateway app; its cleanup context owns the heartbeat task and the upstream session.

    `clock` stamps heartbeats and `monotonic` throttles them (tests inject both); with `tickets` (the queue
    bucket's mirror) clicks that find no instance wait in line, else in the waiting room that retries.
    """
    routes = RouteTable(catalogue)
    visits = VisitLog(bus.publish, subjects, host_label, clock=clock)
    activity = ActivityTracker(bus.publish, subjects, float(catalogue.settings.heartbeat_interval), host_label,
                               clock=clock, monotonic=monotonic, on_settled=visits.page)
    gw = Gateway(bus=bus, subjects=subjects, store=store, catalogue=catalogue, host_label=host_label,
                 routes=routes, activity=activity, metrics=GatewayMetrics(), visits=visits)
    if tickets is not None:
        gw.queue = QueueView(tickets=tickets, publish=bus.publish, subjects=subjects, host_label=host_label,
                             rate=RefillRate(clock))
    routes.on_removed(activity.forget)
    routes.on_removed(lambda instance_id: _close_sockets(gw, instance_id))

    app = web.Application(middlewares=[origin.origin_guard(catalogue.settings.instance_domain, _not_found,
                                                           lambda: gw.catalogue.settings.trusted_proxies)])
    app[GATEWAY] = gw
    app[proxy.WS_PENDING] = {}
    app.on_response_prepare.append(_gateway_page_headers)
    app.router.add_get("/", launch.index)
    app.router.add_get("/launch/{app}", launch.launch, allow_head=False)
    app.router.add_post("/launch/{app}", launch.end_sessions)  # the limit page's "end my sessions"
    app.router.add_get("/launch/{app}/ticket/{ticket}", launch.ticket, allow_head=False)  # a place in line
    app.router.add_get("/launch/{app}/ticket/{ticket}/wait", launch.ticket_wait, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/robots.txt", launch.robots)
    app.router.add_get("/metrics", metrics)
    app.router.add_route("*", INSTANCE_ROUTE.rstrip("/"), proxy.proxy)  # redirected to its prefix
    app.router.add_route("*", INSTANCE_ROUTE + "{tail:.*}", proxy.proxy)
    app.cleanup_ctx.append(_lifecycle)
    app.on_shutdown.append(_close_all_sockets)
    return app


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=60)
    session = aiohttp.ClientSession(
        connector=connector,
        # an instance silent mid-response is cut; WebSockets have no read timeout (aiohttp resets it)
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=UPSTREAM_CONNECT_TIMEOUT,
                                      sock_read=float(gw.catalogue.settings.upstream_read_timeout)),
        auto_decompress=False,  # bytes pass through as the app encoded them
        cookie_jar=aiohttp.DummyCookieJar(),  # one session serves every student: never keep cookies
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
    )
    app[UPSTREAM] = session
    stop_routing = gw.store.on_change(gw.routes.on_change)
    gw.routes.fill(gw.store.all())  # no await since subscribing: no change can slip between
    heartbeats = asyncio.create_task(gw.activity.run(), name="gateway-heartbeats")
    recording = asyncio.create_task(gw.visits.run(), name="gateway-visits")
    waiting: asyncio.Task[None] | None = None
    stop_rate: Callable[[], None] = lambda: None
    if gw.queue is not None:  # the waiting pages this gateway holds, told to the functions; the refill rate
        stop_rate = gw.store.on_change(gw.queue.rate.on_change)
        waiting = asyncio.create_task(gw.queue.run(lambda: float(gw.catalogue.settings.queue_window)),
                                      name="gateway-queue-heartbeats")
    log.info("gateway %s up with %d routes", gw.host_label, len(gw.routes))
    try:
        yield
    finally:
        stop_routing()
        stop_rate()
        heartbeats.cancel()
        recording.cancel()
        if waiting is not None:
            waiting.cancel()
        await asyncio.gather(heartbeats, recording, *([waiting] if waiting else []), return_exceptions=True)
        if gw.bus.is_connected:
            try:
                await asyncio.wait_for(gw.activity.flush(force=True), 2)
                await asyncio.wait_for(gw.visits.flush(), 2)
            except Exception:
                log.warning("last heartbeats or visits not published", exc_info=True)
        await session.close()


def _close_sockets(gw: Gateway, instance_id: str) -> None:
    """A route is gone: its open WebSockets end too (only claimed instances are reachable)."""
    for ws in list(gw.open_sockets.get(instance_id, ())):
        task: asyncio.Task[object] = asyncio.get_running_loop().create_task(
            ws.close(code=SHUTDOWN_CLOSE_CODE, message=b"session ended"))
        gw.background.add(task)
        task.add_done_callback(gw.background.discard)


async def _close_all_sockets(app: web.Application) -> None:
    gw = app[GATEWAY]
    sockets = [ws for group in gw.open_sockets.values() for ws in group]
    await asyncio.gather(*(ws.close(code=SHUTDOWN_CLOSE_CODE, message=b"gateway shutting down")
                           for ws in sockets), return_exceptions=True)


def make_runner(app: web.Application, catalogue: Catalogue, shutdown_timeout: float = 2.0) -> web.AppRunner:
    """The gateway's server: no access log (paths carry ids), ids redacted from aiohttp's error log,
    and one timeout for idle and slow clients.

    aiohttp (>= 3.14) arms its keep-alive timer when a connection opens and after each response,
    and closes the connection if no complete request has arrived by then: `keepalive_timeout`
    bounds both idle keep-alive connections and requests whose headers never finish.
    """
    return web.AppRunner(app, access_log=None, logger=SERVER_LOG, shutdown_timeout=shutdown_timeout,
                         keepalive_timeout=float(catalogue.settings.keepalive_timeout))


_ID_LIKE = re.compile(r"(?<![a-z2-7])([a-z2-7]{4})[a-z2-7]{22}(?![a-z2-7])")
_LINK_TOKEN = re.compile(r"([?&]l=[^&\s\"']{0,6})[^&\s\"']*")  # a lecture link's token: its id's prefix only


def _redact(text: str) -> str:
    return _LINK_TOKEN.sub(r"\1…", _ID_LIKE.sub(r"\1…", text))


class RedactIds(logging.Filter):
    """aiohttp's server log quotes bad request lines, which may hold an id or a lecture link's token: keep
    their short forms only."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = _redact(record.getMessage())
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _redact(record.exc_text)
        return True


SERVER_LOG = logging.getLogger("swarmpool.gateway.server")
SERVER_LOG.addFilter(RedactIds())


def _not_found(request: web.Request) -> web.StreamResponse:
    return web.Response(status=404, text="not found", headers={"Cache-Control": "no-store"})


async def _gateway_page_headers(request: web.Request, response: web.StreamResponse) -> None:
    """The gateway's own pages and redirects never tell anyone where the browser came from; every
    answer's framing rule is the gateway's (the app's `frame_ancestors`, else 'self')."""
    if not request.get(proxy.FROM_INSTANCE, False):
        response.headers.setdefault("Referrer-Policy", "no-referrer")
    spec = _app_of(request)
    apply_frame_policy(response.headers, spec.frame_ancestors if spec is not None else ())


def _app_of(request: web.Request) -> AppSpec | None:
    """The app a request concerns: `/launch/<app>`, or the app of the instance in `/i/<id>/`
    (also once its session has ended); None for the gateway's other pages."""
    gw = request.app[GATEWAY]
    info = request.match_info
    if "app" in info:
        return gw.catalogue.apps.get(info["app"])
    instance_id = info.get("id") or origin.id_in_path(request.rel_url.raw_path)
    if instance_id is None or not valid_id(instance_id):
        return None
    route = gw.routes.get(instance_id)
    name = route.app if route is not None else gw.routes.ended_app(instance_id)
    return gw.catalogue.apps.get(name) if name else None


async def healthz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if not gw.bus.is_connected:
        return web.json_response({"status": "nats disconnected", "routes": len(gw.routes)}, status=503)
    return web.json_response({"status": "ok", "routes": len(gw.routes)})


async def status(request: web.Request) -> web.Response:
    """Public availability per app, aggregate only (no ids, no sessions): available, busy (no warm
    instance now: a click waits), or not accepting (paused or drained: nothing warm, nothing starting);
    and how many students wait in its queue."""
    gw = request.app[GATEWAY]
    apps = {}
    for name in gw.catalogue.apps:
        records = gw.store.all(name)
        ready = sum(r.state == "ready" for r in records)
        starting = sum(r.state == "starting" for r in records)
        queued = gw.queue.tickets.length(name) if gw.queue is not None else 0
        apps[name] = {"status": "available" if ready and not queued else "busy" if starting or queued
                      else "unavailable", "ready": ready, "queued": queued}
    return web.json_response({"apps": apps}, headers={"Cache-Control": "no-store"})


async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    if gw.queue is not None:
        for name in gw.catalogue.apps:
            gw.metrics.queued.labels(name).set(gw.queue.tickets.length(name))
    return web.Response(body=gw.metrics.render(), headers={"Content-Type": gw.metrics.content_type})
