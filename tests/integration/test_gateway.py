"""The gateway against a real nats-server, real KV records and a real in-process upstream app."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from nats.aio.client import Client as NATS
from yarl import URL

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Activity, Claimed, ClaimRefused, ErrorReply, Instance
from swarmpool.bus.wire import encode
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.ids import new_instance_id
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.context import GATEWAY, Gateway

HEARTBEAT = 0.5

CATALOGUE = Catalogue(
    settings=Settings(claim_wait=Duration(0.3), heartbeat_interval=Duration(HEARTBEAT)),
    apps={
        "echo": AppSpec(name="echo", title="Echo <Test>", description="Answers with what it got",
                        image="echo:latest", port=8000, deep_link="open?path=demo.ipynb"),
        "plain": AppSpec(name="plain", title="Plain", description="Serves at its root",
                         image="plain:latest", port=8000, strip_prefix=True),
    },
)


# ---- the upstream: a tiny app standing in for a notebook instance ----


SEEN = web.AppKey("seen", list[str])


@dataclass
class Upstream:
    endpoint: str
    seen: list[str] = field(default_factory=list)


async def _upstream_handler(request: web.Request) -> web.StreamResponse:
    seen = request.app[SEEN]
    seen.append(request.path)
    last = request.path.rstrip("/").rsplit("/", 1)[-1]
    if last == "ws" and request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse(protocols=("v1.kernel", "other"))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT and msg.data.startswith("close:"):
                await ws.close(code=int(msg.data[6:]), message=b"bye")
                break
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws
    if last == "push" and request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        for i in range(int(request.query.get("n", "10"))):  # keep-alives the client never asked for
            await ws.send_str(f"keepalive {i}")
            await asyncio.sleep(float(request.query.get("every", "0.1")))
        await ws.receive()
        return ws
    if last == "stream":
        size = int(request.query["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        block = b"x" * 65536
        while size > 0:
            await response.write(block[:size])
            size -= len(block)
        await response.write_eof()
        return response
    if last == "slow":
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(int(request.query.get("n", "3"))):
            await response.write(b"tick\n")
            await asyncio.sleep(float(request.query.get("every", "0.5")))
        await response.write_eof()
        return response
    if last == "upload":
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})
    if last == "redirect":
        raise web.HTTPFound("/somewhere/else")
    if last == "cookie":
        response = web.json_response({"cookie": request.headers.get("Cookie")})
        response.set_cookie("secret", "for-this-student-only")
        return response
    return web.json_response({
        "path": request.path, "raw_path": request.raw_path, "query": request.query_string,
        "method": request.method, "headers": dict(request.headers),
    })


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    app = web.Application()
    seen: list[str] = []
    app[SEEN] = seen
    app.router.add_route("*", "/{tail:.*}", _upstream_handler)
    runner = web.AppRunner(app, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Upstream(endpoint=f"127.0.0.1:{port}", seen=seen)
    await runner.cleanup()


# ---- the gateway under test ----


@dataclass
class Running:
    url: str
    app: web.Application
    http: aiohttp.ClientSession

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]


class StoppedClock:
    """A monotonic clock that moves only when the test says so: heartbeat throttling without sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@asynccontextmanager
async def running_gateway(nc: NATS, subjects: Subjects, store: InstanceStore,
                          monotonic: Callable[[], float] = time.monotonic) -> AsyncIterator[Running]:
    app = make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE, host_label="gw-test",
                   monotonic=monotonic)
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            yield Running(url=f"http://127.0.0.1:{port}", app=app, http=http)
    finally:
        await runner.cleanup()


@pytest.fixture
async def gateway(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[Running]:
    async with running_gateway(nc, subjects, store) as running:
        yield running


@pytest.fixture
def stopped_clock() -> StoppedClock:
    return StoppedClock()


@pytest.fixture
async def gateway_on_stopped_clock(nc: NATS, subjects: Subjects, store: InstanceStore,
                                   stopped_clock: StoppedClock) -> AsyncIterator[Running]:
    """A gateway whose heartbeat throttle runs on `stopped_clock`."""
    async with running_gateway(nc, subjects, store, monotonic=stopped_clock) as running:
        yield running


class Claimer:
    """A stand-in for the real claimer: answers every claim with whatever the test says."""

    def __init__(self) -> None:
        self.answer: Callable[[str], Any] = lambda app: ClaimRefused(app=app, reason="empty")
        self.requests: list[str] = []

    async def on_request(self, msg: Any) -> None:
        app = msg.subject.rsplit(".", 1)[-1]
        self.requests.append(app)
        reply = self.answer(app)
        await msg.respond(reply if isinstance(reply, bytes) else encode(reply))


@pytest.fixture
async def claimer(nc: NATS, subjects: Subjects) -> AsyncIterator[Claimer]:
    claimer = Claimer()
    sub = await nc.subscribe(subjects.claim_all(), cb=claimer.on_request)
    yield claimer
    await sub.unsubscribe()


class Heartbeats:
    """Every Activity message published in this namespace."""

    def __init__(self, nc: NATS, subjects: Subjects) -> None:
        self._nc = nc
        self._subjects = subjects
        self.messages: list[Activity] = []
        self._changed = asyncio.Condition()
        self._decode = msgspec.json.Decoder(Activity).decode

    async def on_message(self, msg: Any) -> None:
        self.messages.append(self._decode(msg.data))
        async with self._changed:
            self._changed.notify_all()

    def of(self, instance_id: str) -> list[Activity]:
        return [m for m in self.messages if m.id == instance_id]

    async def wait_for(self, check: Callable[[list[Activity]], bool], timeout: float = 5.0) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: check(self.messages)), timeout)

    async def delivered(self) -> None:
        """Every heartbeat already published on this connection has arrived here: a marker published
        after them on the same connection arrives after them."""
        marker = new_instance_id()
        await self._nc.publish(self._subjects.activity("marker", marker),
                               encode(Activity(app="marker", id=marker, at=0)))
        await self.wait_for(lambda _: bool(self.of(marker)))


@pytest.fixture
async def heartbeats(nc: NATS, subjects: Subjects) -> AsyncIterator[Heartbeats]:
    beats = Heartbeats(nc, subjects)
    sub = await nc.subscribe(subjects.activity_all(), cb=beats.on_message)
    await nc.flush()
    yield beats
    await sub.unsubscribe()


async def claimed_instance(store: InstanceStore, endpoint: str, app: str = "echo") -> Instance:
    """A record in the real KV, taken through ready -> claimed as the claimer would."""
    now = time.time()
    ready = await store.create(Instance(id=new_instance_id(), app=app, state="ready", endpoint=endpoint,
                                        created_at=now, ready_at=now))
    claimed = await store.cas(ready, msgspec.structs.replace(ready.instance, state="claimed", claimed_at=now))
    return claimed.instance


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


JSON = {"Accept": "application/json"}


# ---- catalogue and launch ----


async def test_index_lists_the_apps(gateway: Running) -> None:
    async with gateway.http.get(gateway.url + "/") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        body = await r.text()
    assert 'href="/launch/echo"' in body and 'href="/launch/plain"' in body
    assert "Echo &lt;Test&gt;" in body and "Answers with what it got" in body
    assert "/i/" not in body


async def test_launch_redirects_to_the_claimed_instance_and_proxies(
        gateway: Running, claimer: Claimer, upstream: Upstream) -> None:
    instance_id = new_instance_id()
    claimer.answer = lambda app: Claimed(id=instance_id, app=app, endpoint=upstream.endpoint,
                                         deep_link="open?path=demo.ipynb")
    async with gateway.http.get(gateway.url + "/launch/echo", allow_redirects=False) as r:
        assert r.status == 303
        assert r.headers["Location"] == f"/i/{instance_id}/open?path=demo.ipynb"
        assert r.headers["Cache-Control"] == "no-store"
    # no KV record at all: the claim reply alone makes the route, so the follow-up never races the watch
    async with gateway.http.get(gateway.url + r.headers["Location"],
                                headers={"X-Custom": "kept", "Connection": "keep-alive, X-Drop", "X-Drop": "1"}) as r:
        assert r.status == 200
        seen = await r.json()
    assert seen["path"] == f"/i/{instance_id}/open"
    assert seen["query"] == "path=demo.ipynb"
    headers = CIMultiDict(seen["headers"])
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-Host"] == gateway.url.removeprefix("http://")
    assert headers["Host"] == gateway.url.removeprefix("http://")
    assert headers["X-Custom"] == "kept"
    assert "X-Drop" not in headers and "X-Forwarded-Prefix" not in headers
    assert claimer.requests == ["echo"]


async def test_launch_with_an_empty_pool_shows_a_waiting_room(gateway: Running, claimer: Claimer) -> None:
    claimer.answer = lambda app: ClaimRefused(app=app, reason="empty", retry_after=2.0)
    async with gateway.http.get(gateway.url + "/launch/echo", allow_redirects=False) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "2"
        body = await r.text()
    assert '<meta http-equiv="refresh" content="2;url=/launch/echo">' in body
    assert "busy" in body
    async with gateway.http.get(gateway.url + "/launch/echo", headers=JSON) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "2"
        assert await r.json() == {"status": "waiting", "app": "echo", "retry_after": 2}


async def test_launch_of_a_paused_app_says_so(gateway: Running, claimer: Claimer) -> None:
    claimer.answer = lambda app: ClaimRefused(app=app, reason="paused", retry_after=10.0)
    async with gateway.http.get(gateway.url + "/launch/echo") as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "10"
        assert "paused" in await r.text()


async def test_launch_of_an_unknown_app_is_404(gateway: Running, claimer: Claimer) -> None:
    async with gateway.http.get(gateway.url + "/launch/nope") as r:
        assert r.status == 404
        assert "No such app" in await r.text()
    async with gateway.http.get(gateway.url + "/launch/nope", headers=JSON) as r:
        assert r.status == 404
        assert (await r.json())["status"] == "unknown_app"
    assert claimer.requests == []


async def test_launch_without_any_claimer_is_503_not_500(gateway: Running) -> None:
    started = time.monotonic()
    async with gateway.http.get(gateway.url + "/launch/echo", headers=JSON) as r:
        assert r.status == 503
        assert r.headers["Retry-After"] == "3"
        assert (await r.json())["status"] == "waiting"
    assert time.monotonic() - started < 2  # no responders is known at once, no timeout wait


@pytest.mark.parametrize("reply", [
    encode(ErrorReply(error="internal", detail="KeyError")),
    b"not json at all",
    encode(Claimed(id="NOT-AN-ID", app="echo", endpoint="127.0.0.1:1")),
])
async def test_launch_with_a_bad_claim_reply_is_503(gateway: Running, claimer: Claimer, reply: bytes) -> None:
    claimer.answer = lambda app: reply
    async with gateway.http.get(gateway.url + "/launch/echo", allow_redirects=False) as r:
        assert r.status == 503
        assert "Retry-After" in r.headers


async def test_launch_when_the_claimer_times_out_is_503(gateway: Running, nc: NATS, subjects: Subjects) -> None:
    async def never(msg: Any) -> None:
        return None
    sub = await nc.subscribe(subjects.claim_all(), cb=never)
    try:
        async with gateway.http.get(gateway.url + "/launch/echo", allow_redirects=False) as r:
            assert r.status == 503
    finally:
        await sub.unsubscribe()


# ---- the proxy ----


async def test_unknown_ids_get_404_without_touching_any_upstream(gateway: Running, upstream: Upstream) -> None:
    for path in (f"/i/{new_instance_id()}/", f"/i/{new_instance_id()}/some/file.js", f"/i/{new_instance_id()}",
                 "/i/short/", "/i/" + "A" * 26 + "/", "/i/" + "a" * 300 + "/x"):
        async with gateway.http.get(gateway.url + path, allow_redirects=False) as r:
            assert r.status == 404, path
            body = await r.text()
            assert "This session has ended" in body and 'href="/"' in body
    async with gateway.http.post(gateway.url + f"/i/{new_instance_id()}/api", data=b"x", headers=JSON) as r:
        assert r.status == 404
        assert (await r.json())["status"] == "ended"
    assert upstream.seen == []


async def test_a_ready_instance_is_not_routable(gateway: Running, store: InstanceStore, upstream: Upstream) -> None:
    now = time.time()
    ready = await store.create(Instance(id=new_instance_id(), app="echo", state="ready",
                                        endpoint=upstream.endpoint, created_at=now, ready_at=now))
    async with gateway.http.get(gateway.url + f"/i/{ready.instance.id}/") as r:
        assert r.status == 404
    assert upstream.seen == []


async def test_a_retired_instance_disappears_from_the_routes(
        gateway: Running, store: InstanceStore, upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/tree") as r:
        assert r.status == 200
    current = store.get("echo", instance.id)
    assert current is not None
    await store.cas(current, msgspec.structs.replace(instance, state="retiring", reason="idle"))
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/tree") as r:
        assert r.status == 404
        body = await r.text()
    assert "This session has ended" in body
    assert 'href="/launch/echo"' in body  # the right app to start again
    assert upstream.seen == [f"/i/{instance.id}/tree"]
    assert instance.id not in body


async def test_routes_are_filled_from_records_that_existed_before_the_gateway(
        nc: NATS, subjects: Subjects, store: InstanceStore, upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    app = make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        assert app[GATEWAY].routes.get(instance.id) is not None
    finally:
        await runner.cleanup()


async def test_bare_instance_path_redirects_to_its_root(gateway: Running, store: InstanceStore,
                                                      upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}?a=1", allow_redirects=False) as r:
        assert r.status == 307
        assert r.headers["Location"] == f"/i/{instance.id}/?a=1"


async def test_strip_prefix_forwards_the_tail_only(gateway: Running, store: InstanceStore,
                                                   upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint, app="plain")
    url = URL(gateway.url + f"/i/{instance.id}/api/x%20y?q=1&r=%2F", encoded=True)
    async with gateway.http.get(url) as r:
        assert r.status == 200
        seen = await r.json()
    assert seen["raw_path"] == "/api/x%20y?q=1&r=%2F"
    assert CIMultiDict(seen["headers"])["X-Forwarded-Prefix"] == f"/i/{instance.id}"
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/") as r:
        assert (await r.json())["path"] == "/"


async def test_upstream_redirects_pass_through_unchanged(gateway: Running, store: InstanceStore,
                                                        upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/redirect", allow_redirects=False) as r:
        assert r.status == 302
        assert r.headers["Location"] == "/somewhere/else"


async def test_cookies_are_passed_through_but_never_kept_by_the_gateway(
        gateway: Running, store: InstanceStore, upstream: Upstream) -> None:
    first = await claimed_instance(store, upstream.endpoint)
    second = await claimed_instance(store, upstream.endpoint)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh:
        async with fresh.get(gateway.url + f"/i/{first.id}/cookie") as r:
            assert "secret=for-this-student-only" in r.headers["Set-Cookie"]
        async with fresh.get(gateway.url + f"/i/{second.id}/cookie") as r:
            assert (await r.json())["cookie"] is None
        async with fresh.get(gateway.url + f"/i/{second.id}/cookie", headers={"Cookie": "mine=1"}) as r:
            assert (await r.json())["cookie"] == "mine=1"


async def test_large_bodies_stream_both_ways(gateway: Running, store: InstanceStore, upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    size = 20 * 1024 * 1024
    received = 0
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/stream?size={size}") as r:
        assert r.status == 200
        async for chunk in r.content.iter_any():
            received += len(chunk)
    assert received == size

    async def body() -> AsyncIterator[bytes]:
        for _ in range(size // 65536):
            yield b"y" * 65536
    async with gateway.http.post(gateway.url + f"/i/{instance.id}/upload", data=body()) as r:
        assert r.status == 200
        assert (await r.json())["received"] == size


async def test_first_bytes_arrive_before_the_upstream_finishes(gateway: Running, store: InstanceStore,
                                                              upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/slow?n=3&every=1") as r:
        started = time.monotonic()
        first = await r.content.readline()
        assert first == b"tick\n"
        assert time.monotonic() - started < 0.9  # not buffered until the end (about 3 s)


async def test_a_refused_connection_ends_the_session(gateway: Running, store: InstanceStore) -> None:
    """Item 5 of issue 8 (the 502 window): a claimed instance whose container is dead (nothing
    listens on its port: the connection is refused) shows the session-ended page at once, before
    any reconcile has failed its record; a claimed instance is never restarted, so it cannot come back."""
    instance = await claimed_instance(store, f"127.0.0.1:{closed_port()}")
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/") as r:
        page = await r.text()
        assert r.status == 404 and "session has ended" in page and "/launch/echo" in page, (r.status, page[:200])
        assert r.headers["Cache-Control"] == "no-store"
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/api", headers=JSON) as r:
        assert r.status == 404 and await r.json() == {"status": "ended", "app": "echo"}
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/ws")
    assert refused.value.status == 404


async def test_an_upstream_that_hangs_up_is_502(gateway: Running, store: InstanceStore) -> None:
    """Anything short of a refused connection (here: accepted, then closed without an answer) may
    pass: "not answering" (502), never the session-ended page."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        instance = await claimed_instance(store, f"127.0.0.1:{port}")
        async with gateway.http.get(gateway.url + f"/i/{instance.id}/") as r:
            assert r.status == 502
            assert "not answering" in await r.text()
        with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
            await gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/ws")
        assert failed.value.status == 502
    finally:
        server.close()
        await server.wait_closed()


async def test_websocket_echo_text_binary_and_close_code(gateway: Running, store: InstanceStore,
                                                        upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/api/kernels/k/ws",
                                       protocols=("v1.kernel",)) as ws:
        assert ws.protocol == "v1.kernel"
        await ws.send_str("hello")
        assert (await ws.receive(timeout=5)).data == "hello"
        await ws.send_bytes(b"\x00\x01" * 100_000)
        assert (await ws.receive(timeout=5)).data == b"\x00\x01" * 100_000
        await ws.send_str("close:4001")
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 4001
    assert f"/i/{instance.id}/api/kernels/k/ws" in upstream.seen


async def test_websocket_closes_when_its_route_disappears(gateway: Running, store: InstanceStore,
                                                         upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/ws") as ws:
        await ws.send_str("ping")
        assert (await ws.receive(timeout=5)).data == "ping"
        current = store.get("echo", instance.id)
        assert current is not None
        await store.cas(current, msgspec.structs.replace(instance, state="retiring"))
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE
        assert msg.data == 1001


# ---- activity heartbeats ----


async def test_websocket_connect_and_disconnect_publish_at_once(
        gateway: Running, store: InstanceStore, upstream: Upstream, heartbeats: Heartbeats) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/ws") as ws:
        await heartbeats.wait_for(lambda _: any(m.connections == 1 for m in heartbeats.of(instance.id)))
        connected = next(m for m in heartbeats.of(instance.id) if m.connections == 1)
        assert connected.app == "echo" and connected.gateway == "gw-test"
        assert any(m.traffic for m in heartbeats.of(instance.id))  # the upgrade request itself
        await ws.send_str("hi")
        await ws.receive(timeout=5)
    closed_at = time.monotonic()
    before = len(heartbeats.of(instance.id))
    await heartbeats.wait_for(lambda _: any(m.connections == 0 for m in heartbeats.of(instance.id)[before - 1:]))
    assert time.monotonic() - closed_at < HEARTBEAT + 0.4
    assert heartbeats.of(instance.id)[-1].connections == 0


async def test_many_requests_make_few_heartbeats(gateway_on_stopped_clock: Running, stopped_clock: StoppedClock,
                                                 store: InstanceStore, upstream: Upstream,
                                                 heartbeats: Heartbeats) -> None:
    gateway = gateway_on_stopped_clock
    instance = await claimed_instance(store, upstream.endpoint)
    for _ in range(200):  # all within one heartbeat interval: the clock stands still
        async with gateway.http.get(gateway.url + f"/i/{instance.id}/x") as r:
            assert r.status == 200
    await heartbeats.delivered()
    assert [(m.traffic, m.connections) for m in heartbeats.of(instance.id)] == [(True, 0)]
    stopped_clock.advance(HEARTBEAT)  # the rest of the traffic is due now, in one heartbeat
    await heartbeats.wait_for(lambda _: len(heartbeats.of(instance.id)) == 2)
    await heartbeats.delivered()
    assert [(m.traffic, m.connections) for m in heartbeats.of(instance.id)] == [(True, 0), (True, 0)]


async def test_messages_from_the_server_alone_are_not_client_traffic(
        gateway_on_stopped_clock: Running, stopped_clock: StoppedClock, store: InstanceStore, upstream: Upstream,
        heartbeats: Heartbeats) -> None:
    gateway = gateway_on_stopped_clock
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/push?n=15&every=0.02") as ws:
        await heartbeats.wait_for(lambda _: any(m.connections == 1 for m in heartbeats.of(instance.id)))
        stopped_clock.advance(HEARTBEAT)  # from here on, any traffic would be reported at once
        for _ in range(15):
            msg = await ws.receive(timeout=5)
            assert msg.data.startswith("keepalive")
        await heartbeats.delivered()
        beats = heartbeats.of(instance.id)
        connected = next(i for i, m in enumerate(beats) if m.connections == 1)
        assert any(m.traffic for m in beats[:connected + 1])  # the upgrade request itself
        assert not any(m.traffic for m in beats[connected + 1:])
        await ws.send_str("a real click")
        await heartbeats.wait_for(lambda _: any(m.traffic for m in heartbeats.of(instance.id)[connected + 1:]))


async def test_a_long_streaming_response_counts_as_a_connection(
        gateway: Running, store: InstanceStore, upstream: Upstream, heartbeats: Heartbeats) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/slow?n=4&every=0.5") as r:
        await heartbeats.wait_for(lambda _: any(m.connections == 1 for m in heartbeats.of(instance.id)))
        await r.read()
    await heartbeats.wait_for(lambda _: heartbeats.of(instance.id)[-1].connections == 0)


async def test_retired_instances_leave_the_activity_table(gateway: Running, store: InstanceStore,
                                                         upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.get(gateway.url + f"/i/{instance.id}/") as r:
        assert r.status == 200
    assert gateway.gw.activity.tracking(instance.id)
    current = store.get("echo", instance.id)
    assert current is not None
    await store.cas(current, msgspec.structs.replace(instance, state="retiring"))
    assert not gateway.gw.activity.tracking(instance.id)


# ---- operations and robustness ----


async def test_healthz(gateway: Running) -> None:
    async with gateway.http.get(gateway.url + "/healthz") as r:
        assert r.status == 200
        assert await r.json() == {"status": "ok", "routes": 0}


async def test_metrics_never_name_an_instance(gateway: Running, claimer: Claimer, store: InstanceStore,
                                              upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    claimer.answer = lambda app: Claimed(id=instance.id, app=app, endpoint=upstream.endpoint)
    async with gateway.http.get(gateway.url + "/launch/echo") as r:
        assert r.status == 200
    async with gateway.http.ws_connect(gateway.url + f"/i/{instance.id}/ws") as ws:
        await ws.send_str("x")
        await ws.receive(timeout=5)
        async with gateway.http.get(gateway.url + "/metrics") as r:
            assert r.status == 200
            text = await r.text()
    assert instance.id not in text and instance.id[:8] not in text
    assert 'swarmpool_gateway_launches_total{app="echo",outcome="claimed"} 1.0' in text
    assert 'swarmpool_gateway_websockets_open{app="echo"} 1.0' in text
    assert "swarmpool_gateway_claim_seconds_bucket" in text
    assert 'swarmpool_gateway_proxied_requests_total{app="echo",kind="http"}' in text


@pytest.mark.parametrize(("method", "path", "statuses"), [
    ("POST", "/launch/echo", {400}),  # ending sessions needs the browser cookie and its token
    ("HEAD", "/launch/echo", {405}),
    ("GET", "/launch/", {404}),
    ("GET", "/launch/Not%20An%20App", {404}),
    ("GET", "/launch/" + "x" * 5000, {404}),
    ("GET", "/i/", {404}),
    ("GET", "/i//x", {404}),
    ("GET", "/i/%2e%2e/%2e%2e/etc/passwd", {404}),
    ("GET", "/no/such/page", {404}),
    ("DELETE", "/", {405}),
    ("GET", "/%ff%fe", {404}),
])
async def test_bad_requests_get_a_4xx(gateway: Running, claimer: Claimer, method: str, path: str,
                                      statuses: set[int]) -> None:
    async with gateway.http.request(method, gateway.url + path, allow_redirects=False) as r:
        assert r.status in statuses
    assert claimer.requests == []


async def test_raw_garbage_on_the_socket_is_a_4xx(gateway: Running) -> None:
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /i/\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    status = await reader.readline()
    writer.close()
    assert status.split()[1].startswith(b"4")


async def test_stopping_the_gateway_closes_open_websockets(
        nc: NATS, subjects: Subjects, store: InstanceStore, upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    runner = web.AppRunner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE),
                           shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"http://127.0.0.1:{port}/i/{instance.id}/ws") as ws:
            await ws.send_str("x")
            await ws.receive(timeout=5)
            started = time.monotonic()
            await runner.cleanup()
            assert time.monotonic() - started < 2
            msg = await ws.receive(timeout=5)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)


async def test_expect_100_continue_uploads(gateway: Running, store: InstanceStore, upstream: Upstream) -> None:
    instance = await claimed_instance(store, upstream.endpoint)
    async with gateway.http.post(gateway.url + f"/i/{instance.id}/upload", data=b"z" * 100_000,
                                 expect100=True) as r:
        assert r.status == 200
        assert (await r.json())["received"] == 100_000
