"""The reverse proxy `/i/<id>/...` to claimed instances: streamed HTTP and WebSocket.

Only ids in the route table (claimed instances) reach an upstream; anything else gets the
"session ended" page without any upstream being contacted.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import aiohttp
from aiohttp import WebSocketError, WSMsgType, web
from multidict import CIMultiDict, istr
from yarl import URL

from swarmpool.gateway import pages
from swarmpool.gateway.context import GATEWAY, UPSTREAM, Gateway, wants_json
from swarmpool.gateway.origin import (
    DEFAULT_TRUSTED_PROXIES,
    NEVER_FORWARDED,
    ORIGIN_WIDE,
    bare_prefix,
    client_address,
    confine_location,
    confine_set_cookie,
    public_scheme,
    trusted_peer,
    without_gateway_cookies,
)
from swarmpool.gateway.framing import embeddable, third_party_cookie
from swarmpool.gateway.routing import Route
from swarmpool.gateway.static_cache import (
    Asset,
    Key,
    StaticCache,
    cacheable,
    fill_cookie,
    make_asset,
    not_modified,
    response_parts,
    static_path,
)
from swarmpool.ids import instance_prefix, valid_id

log = logging.getLogger(__name__)

HOP_BY_HOP = frozenset(istr(h) for h in (
    "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
    "TE", "Trailer", "Transfer-Encoding", "Upgrade",
))
WS_HANDSHAKE = frozenset(istr(h) for h in (
    "Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions",
    "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept",
))
FORWARDED = frozenset(istr(h) for h in (
    "X-Forwarded-For", "X-Real-IP", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix",
))
FROM_INSTANCE = web.RequestKey("from_instance", bool)  # this response's headers are the instance's
WS_PENDING = web.AppKey("ws_pending", dict[str, int])  # id -> WebSocket handshakes under way
STREAM_GRACE = 1.0  # an HTTP response still streaming after this long counts as an open connection
SMALL_BODY = 256 * 1024  # bodies up to this size are relayed in one write
FILL_TIMEOUT = 10.0  # a static cache fill from a ready instance; past it the request passes through


# ---- pure helpers ----


def without_hop_by_hop(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """A copy without hop-by-hop headers, including those the Connection header names."""
    source: CIMultiDict[str] = CIMultiDict(headers)
    named = {istr(h.strip()) for h in source.get("Connection", "").split(",") if h.strip()}
    return CIMultiDict((k, v) for k, v in source.items() if k not in HOP_BY_HOP and k not in named)


def forwarding(client: CIMultiDict[str], *, remote: str | None, scheme: str, host: str,
               prefix: str | None, proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES) -> CIMultiDict[str]:
    """The X-Forwarded-* headers for the upstream, set from the connection: a client's own are
    believed only from a trusted proxy, and X-Forwarded-Host is always the Host the gateway saw."""
    trusted = trusted_peer(remote, proxies)
    out: CIMultiDict[str] = CIMultiDict()
    address = client_address(client.getall("X-Forwarded-For", []), remote, proxies, trusted)
    out["X-Forwarded-For"] = address
    out["X-Real-IP"] = address
    proto = client.get("X-Forwarded-Proto", "").strip().lower() if trusted else ""
    out["X-Forwarded-Proto"] = proto if proto in ("http", "https") else scheme
    out["X-Forwarded-Host"] = host
    if prefix:
        out["X-Forwarded-Prefix"] = prefix
    return out


def upstream_path(raw_path: str, instance_id: str, strip_prefix: bool) -> str:
    """Instances serve under their prefix `/i/<id>/`, unless the app asks for it to be stripped."""
    if not strip_prefix:
        return raw_path
    return raw_path[len(_bare_prefix(instance_id)):] or "/"


def _bare_prefix(instance_id: str) -> str:
    """The instance's prefix without its trailing slash (`/i/<id>`), as X-Forwarded-Prefix carries it."""
    return bare_prefix(instance_id)


def upstream_url(scheme: str, route: Route, path: str, raw_query: str) -> URL:
    text = f"{scheme}://{route.endpoint}{path}" + (f"?{raw_query}" if raw_query else "")
    return URL(text, encoded=True)


def is_websocket(request: web.Request) -> bool:
    return (request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in request.headers.get("Connection", "").lower())


def _upstream_headers(request: web.Request, instance_id: str, route: Route) -> CIMultiDict[str]:
    headers = without_hop_by_hop(request.headers)
    for name in FORWARDED | NEVER_FORWARDED:
        headers.popall(name, None)
    cookies = without_gateway_cookies("; ".join(headers.popall("Cookie", [])))
    if cookies:
        headers["Cookie"] = cookies
    headers.popall("Expect", None)  # the gateway already answered 100-continue itself
    proxies = request.app[GATEWAY].catalogue.settings.trusted_proxies
    headers.extend(forwarding(CIMultiDict(request.headers), remote=request.remote, scheme=request.scheme,
                              host=request.host, prefix=_bare_prefix(instance_id) if route.strip_prefix else None,
                              proxies=proxies))
    return headers


def downstream_headers(upstream: Mapping[str, str], instance_id: str, route: Route,
                       request_host: str, third_party: bool = False) -> CIMultiDict[str]:
    """The instance's response headers as the browser gets them: confined to the instance's prefix;
    `third_party`: its cookies must also work inside an allowed cross-site frame (HTTPS only)."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in CIMultiDict(upstream).items():
        if name in HOP_BY_HOP or name in ORIGIN_WIDE:
            continue
        if name == "Set-Cookie":
            value = confine_set_cookie(value, instance_id, route.strip_prefix)
            if third_party:
                value = third_party_cookie(value)
        elif name == "Location" and route.strip_prefix:
            value = confine_location(value, instance_id, request_host)
        out.add(name, value)
    return out


class _BodyStream:
    """The client's request body, cut when it sends nothing for `timeout` seconds (slow uploads)."""

    def __init__(self, request: web.Request, timeout: float) -> None:
        self._request = request
        self._timeout = timeout
        self.timed_out = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk = await self._request.content.readany()
            except TimeoutError:
                self.timed_out = True
                raise
            if not chunk:
                return
            yield chunk


# ---- handlers ----


async def proxy(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    instance_id = request.match_info["id"]
    route = gw.routes.get(instance_id) if valid_id(instance_id) else None
    if route is None:
        return _ended(request, gw, instance_id)
    if "tail" not in request.match_info:  # /i/<id> -> /i/<id>/
        query = request.rel_url.raw_query_string
        raise web.HTTPTemporaryRedirect(instance_prefix(instance_id) + (f"?{query}" if query else ""))
    gw.activity.seen(instance_id, route.app)
    path = upstream_path(request.rel_url.raw_path, instance_id, route.strip_prefix)
    if is_websocket(request):
        gw.metrics.proxied.labels(route.app, "websocket").inc()
        return await _websocket(request, gw, instance_id, route, path)
    if request.method == "GET":
        cached = await _from_static_cache(request, gw, instance_id, route)
        if cached is not None:
            return cached
    gw.metrics.proxied.labels(route.app, "http").inc()
    return await _http(request, gw, instance_id, route, path)


# ---- the shared static cache ----


def static_cache(gw: Gateway) -> StaticCache:
    if gw.static is None:
        settings = gw.catalogue.settings
        gw.static = StaticCache(int(settings.static_cache_size), int(settings.static_cache_variants))
    return gw.static


async def _from_static_cache(request: web.Request, gw: Gateway, instance_id: str,
                             route: Route) -> web.Response | None:
    """A static file of the app from the cache of its image (filled from a ready instance on a
    miss); None: not a static path, or not cacheable: the instance answers it itself."""
    spec = gw.catalogue.apps.get(route.app)
    if spec is None or not spec.static_paths:
        return None
    relative = request.rel_url.raw_path[len(instance_prefix(instance_id)):]
    if not static_path(relative, spec.static_paths):
        return None
    image = route.image
    if not image:  # routed from the claim reply: the mirror has the record
        record = gw.store.get(route.app, instance_id)
        image = record.instance.image if record is not None else ""
    if not image:
        return None
    cache = static_cache(gw)
    key = Key(image=image, path=relative, query=request.rel_url.raw_query_string)
    cache.note(key, instance_id)  # demand: which sessions ask for this query (it decides which variants stay)
    asset = cache.get(key)
    if asset is None:
        if cache.accepts(key):
            asset = await cache.load(key, lambda: _fill(request, gw, route, key))
        if asset is None:
            gw.metrics.static_cache.labels(route.app, "pass").inc()
            return None
    gw.metrics.static_cache.labels(route.app, "hit").inc()
    return _asset_response(request, asset)


async def _fill(request: web.Request, gw: Gateway, route: Route, key: Key) -> Asset | None:
    """Fetch a static file from a ready instance of the image: no student has touched it, so what
    it serves is what the image serves. Never from a claimed instance."""
    sources = [r for r in gw.store.all(route.app)
               if r.state == "ready" and r.image == key.image and r.endpoint and not r.used]
    if not sources:
        return None
    source = sources[0]
    prefix = "/" if route.strip_prefix else instance_prefix(source.id)
    url = URL(f"http://{source.endpoint}{prefix}{key.path}" + (f"?{key.query}" if key.query else ""), encoded=True)
    cache = static_cache(gw)
    gw.metrics.static_cache.labels(route.app, "fill").inc()
    ask: dict[str, str] = {"Accept-Encoding": "identity"}
    try:
        async with asyncio.timeout(FILL_TIMEOUT):
            upstream = await request.app[UPSTREAM].get(url, headers=ask, allow_redirects=False)
            cookie = fill_cookie(upstream.headers.getall("Set-Cookie", [])) if upstream.status == 200 else ""
            if cookie:  # an identity for the gateway's own cookie-less request: answer it once
                upstream.release()
                upstream = await request.app[UPSTREAM].get(url, headers={**ask, "Cookie": cookie},
                                                           allow_redirects=False)
            async with upstream:
                if not cacheable("GET", upstream.status, upstream.headers):
                    return None
                length = upstream.headers.get("Content-Length")
                if length is not None and (not length.isdigit() or int(length) > cache.max_asset):
                    return None
                chunks: list[bytes] = []
                total = 0
                async for chunk in upstream.content.iter_any():
                    total += len(chunk)
                    if total > cache.max_asset:
                        return None
                    chunks.append(chunk)
                body = b"".join(chunks)
                headers = upstream.headers
    except (aiohttp.ClientError, OSError, TimeoutError) as err:
        log.info("static cache fill for %s failed: %s", route.app, type(err).__name__)
        return None
    still = gw.store.get(route.app, source.id)
    if still is None or still.instance.state != "ready" or still.instance.used:
        return None  # claimed while we fetched: what it served is no longer the image's word
    asset = make_asset(body, headers)
    cache.put(route.app, key, asset)
    return asset


def _asset_response(request: web.Request, asset: Asset) -> web.Response:
    body, headers = response_parts(asset, request.headers.get("Accept-Encoding", ""))
    if not_modified(request.headers.get("If-None-Match", ""), asset.etag):
        for name in ("Content-Encoding", "Content-Type"):
            headers.popall(name, None)
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


def _ended(request: web.Request, gw: Gateway, instance_id: str, app: str | None = None) -> web.Response:
    app = app or (gw.routes.ended_app(instance_id) if valid_id(instance_id) else None)
    spec = gw.catalogue.apps.get(app) if app else None
    if wants_json(request):
        return web.json_response({"status": "ended", "app": spec.name if spec else None}, status=404)
    return web.Response(text=pages.session_ended_page(spec), content_type="text/html", status=404,
                        headers={"Cache-Control": "no-store"})


def refused(err: BaseException) -> bool:
    """The upstream's host refused the connection: nothing listens on its port any more. A claimed
    instance is never restarted (restart policy none), so its session has ended; a timeout or any
    other error may pass and stays "not answering"."""
    cause = err.os_error if isinstance(err, aiohttp.ClientConnectorError) else err
    return isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED


def _not_answering(request: web.Request, gw: Gateway, route: Route, err: BaseException,
                   instance_id: str = "") -> web.Response:
    gw.metrics.upstream_errors.labels(route.app).inc()
    if instance_id and refused(err):
        log.info("upstream of %s refused the connection: its session has ended", route.app)
        return _ended(request, gw, instance_id, route.app)
    log.warning("upstream of %s not answering: %s", route.app, type(err).__name__)
    if wants_json(request):
        return web.json_response({"status": "not_answering", "app": route.app}, status=502)
    return web.Response(text=pages.not_answering_page(gw.catalogue.apps.get(route.app)), content_type="text/html",
                        status=502, headers={"Cache-Control": "no-store"})


async def _http(request: web.Request, gw: Gateway, instance_id: str, route: Route,
                path: str) -> web.StreamResponse:
    session = request.app[UPSTREAM]
    url = upstream_url("http", route, path, request.rel_url.raw_query_string)
    headers = _upstream_headers(request, instance_id, route)
    upload = _BodyStream(request, float(gw.catalogue.settings.body_timeout)) if request.body_exists else None
    try:
        upstream = await session.request(request.method, url, headers=headers,
                                         data=upload.chunks() if upload else None, allow_redirects=False)
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
        if upload is not None and upload.timed_out:
            log.info("request body to %s stalled: cut", route.app)
            raise web.HTTPRequestTimeout(headers={"Connection": "close"}) from None
        return _not_answering(request, gw, route, err, instance_id)
    request[FROM_INSTANCE] = True
    if (request.method == "GET" and upstream.status == 200
            and upstream.headers.get("Content-Type", "").lower().startswith("text/html")):
        spec = gw.catalogue.apps.get(route.app)
        gw.activity.page_served(instance_id, route.app, spec is not None and spec.settle_on == "websocket")

    counted = False

    def long_lived() -> None:
        nonlocal counted
        counted = True
        gw.activity.opened(instance_id, route.app)

    spec = gw.catalogue.apps.get(route.app)
    third_party = (spec is not None and embeddable(spec.frame_ancestors)
                   and public_scheme(request, gw.catalogue.settings.trusted_proxies) == "https")
    headers_out = downstream_headers(upstream.headers, instance_id, route, request.host, third_party)
    if _small(request, upstream):
        # one write for headers and body: most notebook assets and API answers are small
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            return _not_answering(request, gw, route, err)
        finally:
            upstream.release()
        headers_out.popall("Content-Length", None)
        return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers_out)

    timer = asyncio.get_running_loop().call_later(STREAM_GRACE, long_lived)
    try:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers_out)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except ConnectionResetError:  # the client went away
            return response
        except (aiohttp.ClientError, asyncio.TimeoutError) as err:
            # headers are sent: the only honest signal left is to cut the connection
            log.warning("upstream of %s broke mid-response: %s", route.app, type(err).__name__)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response
    finally:
        timer.cancel()
        upstream.release()
        if counted:
            gw.activity.closed(instance_id)


def _small(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """A response whose whole body is announced and small: buffer it and answer in one write."""
    if request.method == "HEAD" or upstream.status in (204, 304) or upstream.status < 200:
        return False
    length = upstream.headers.get("Content-Length")
    return length is not None and length.isdigit() and int(length) <= SMALL_BODY


_CLOSE_UNSENDABLE = {1005, 1006, 1015}


def _close_code(code: object) -> int:
    if isinstance(code, int) and 1000 <= code <= 4999 and code not in _CLOSE_UNSENDABLE:
        return code
    return 1000


async def _websocket(request: web.Request, gw: Gateway, instance_id: str, route: Route,
                     path: str) -> web.StreamResponse:
    session = request.app[UPSTREAM]
    url = upstream_url("ws", route, path, request.rel_url.raw_query_string)
    headers = _upstream_headers(request, instance_id, route)
    for name in WS_HANDSHAKE:
        headers.popall(name, None)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    settings = gw.catalogue.settings
    pending = request.app[WS_PENDING]
    if len(gw.open_sockets.get(instance_id, ())) + pending.get(instance_id, 0) >= settings.ws_per_instance:
        log.info("websocket refused for %s: %d open, the limit", route.app, settings.ws_per_instance)
        return web.Response(status=429, text="too many open connections to this session",
                            headers={"Retry-After": "5"})
    pending[instance_id] = pending.get(instance_id, 0) + 1
    try:
        try:
            # a message larger than the bound closes that socket (1009) before its payload is read
            upstream = await session.ws_connect(url, protocols=protocols, headers=headers, autoping=False,
                                                autoclose=False, max_msg_size=int(settings.ws_max_message),
                                                compress=0)
        except aiohttp.WSServerHandshakeError as err:
            status = err.status if 400 <= err.status < 600 else 502
            log.info("upstream of %s refused a websocket: %s", route.app, err.status)
            return web.Response(status=status, text="websocket refused by the app")
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as err:
            return _not_answering(request, gw, route, err, instance_id)

        client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol else (),
                                       autoping=False, autoclose=False, max_msg_size=int(settings.ws_max_message),
                                       compress=False)
        try:
            await client.prepare(request)
        except Exception:
            await upstream.close()
            raise
    finally:
        pending[instance_id] -= 1
        if not pending[instance_id]:
            del pending[instance_id]
    sockets = gw.open_sockets.setdefault(instance_id, set())
    sockets.add(client)
    gw.activity.opened(instance_id, route.app)
    gw.activity.socket_opened(instance_id, route.app)
    gw.metrics.ws_open.labels(route.app).inc()
    try:
        await _pump_both(client, upstream, on_client_message=lambda: gw.activity.touch(instance_id))
    finally:
        gw.metrics.ws_open.labels(route.app).dec()
        gw.activity.closed(instance_id)
        sockets.discard(client)
        if not sockets:
            gw.open_sockets.pop(instance_id, None)
    return client


Socket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(src: Socket, dst: Socket, on_message: Callable[[], None] | None) -> tuple[int, bytes]:
    """Copy frames from src to dst until src closes; return the close code and reason."""
    while True:
        msg = await src.receive()
        try:
            if msg.type is WSMsgType.TEXT:
                if on_message is not None:
                    on_message()
                await dst.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                if on_message is not None:
                    on_message()
                await dst.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await dst.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await dst.pong(msg.data)
            elif msg.type is WSMsgType.CLOSE:
                reason = msg.extra.encode() if isinstance(msg.extra, str) else b""
                return _close_code(msg.data), reason
            elif msg.type is WSMsgType.ERROR and isinstance(msg.data, WebSocketError):
                return _close_code(msg.data.code), b""  # e.g. 1009: a message over the bound
            else:  # CLOSING, CLOSED, other errors
                return (1011 if msg.type is WSMsgType.ERROR else 1000), b""
        except ConnectionResetError:  # dst is gone
            return 1001, b""


async def _pump_both(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                     on_client_message: Callable[[], None]) -> None:
    """Both directions at once; when either side closes, close the other with the same code."""
    up = asyncio.create_task(_pump(client, upstream, on_client_message), name="ws-client-to-app")
    down = asyncio.create_task(_pump(upstream, client, None), name="ws-app-to-client")
    try:
        done, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        first = done.pop()
        code, reason = first.result() if not first.cancelled() and first.exception() is None else (1011, b"")
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    except asyncio.CancelledError:
        up.cancel()
        down.cancel()
        code, reason = 1001, b""
        await asyncio.gather(up, down, return_exceptions=True)
        await _close_quietly(upstream, code, reason)
        await _close_quietly(client, code, reason)
        raise
    await _close_quietly(upstream, code, reason)
    await _close_quietly(client, code, reason)


async def _close_quietly(ws: Socket, code: int, reason: bytes) -> None:
    try:
        await asyncio.wait_for(ws.close(code=code, message=reason), 5)
    except Exception:
        pass
