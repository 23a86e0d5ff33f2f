"""The gateway keeps instances from reaching each other and bounds what one client may cost.

Real nats-server and KV records, the real gateway on a loopback port, small in-process upstreams,
raw sockets where a client misbehaves below HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Claimed
from swarmpool.bus.spec import AppSpec, ByteSize, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from swarmpool.gateway.origin import host_label
from swarmpool.ids import new_instance_id
from tests.integration.test_gateway import Claimer, claimed_instance, claimer  # noqa: F401

WS_LIMIT = 64 * 1024
TIMEOUT = 1.0  # keep-alive/header, body and upstream read timeouts of the gateway under test
DOMAIN = "apps.test"


def catalogue(**settings: object) -> Catalogue:
    return Catalogue(
        settings=Settings(claim_wait=Duration(0.3), ws_max_message=ByteSize(WS_LIMIT), ws_per_instance=2,
                          keepalive_timeout=Duration(TIMEOUT), body_timeout=Duration(TIMEOUT),
                          upstream_read_timeout=Duration(TIMEOUT), **settings),  # type: ignore[arg-type]
        apps={
            "echo": AppSpec(name="echo", image="echo:latest", port=8000, deep_link="tree"),
            "plain": AppSpec(name="plain", image="plain:latest", port=8000, strip_prefix=True),
        },
    )


# ---- an upstream that answers with whatever headers the test asks for ----


async def _upstream(request: web.Request) -> web.StreamResponse:
    last = request.path.rstrip("/").rsplit("/", 1)[-1]
    if last == "ws":
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws
    if last == "stall":  # headers, one line, then silence
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.Event().wait()
    if last == "upload":
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total})
    headers: CIMultiDict[str] = CIMultiDict()
    for item in request.query.getall("h", []):
        name, _, value = item.partition(":")
        headers.add(name, value)
    status = int(request.query.get("status", "200"))
    return web.json_response({"path": request.path, "headers": dict(request.headers)}, status=status,
                             headers=headers)


@dataclass
class World:
    url: str
    host: str
    endpoint: str
    http: aiohttp.ClientSession
    store: InstanceStore


@asynccontextmanager
async def world(nc: NATS, subjects: Subjects, store: InstanceStore, cat: Catalogue) -> AsyncIterator[World]:
    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", _upstream)
    up_runner = web.AppRunner(up, shutdown_timeout=0.5)
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    runner = make_runner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=cat), cat,
                         shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield World(url=f"http://{host}", host=host, endpoint=f"127.0.0.1:{up_runner.addresses[0][1]}",
                        http=http, store=store)
    finally:
        await runner.cleanup()
        await up_runner.cleanup()


@pytest.fixture
async def gw(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[World]:
    async with world(nc, subjects, store, catalogue()) as w:
        yield w


# ---- path mode: response and request headers ----


async def test_set_cookie_is_confined_to_the_instance(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    prefix = f"/i/{instance.id}"
    query = [("h", "Set-Cookie:a=1; Path=/; Domain=127.0.0.1; HttpOnly"), ("h", f"Set-Cookie:b=2; Path={prefix}/x"),
             ("h", "Set-Cookie:c=3"), ("h", "Set-Cookie:d=4; path=/elsewhere; SameSite=Lax")]
    async with gw.http.get(gw.url + prefix + "/", params=query) as r:
        cookies = r.headers.getall("Set-Cookie")
    assert cookies == [f"a=1; Path={prefix}; HttpOnly", f"b=2; Path={prefix}/x", "c=3",
                       f"d=4; Path={prefix}; SameSite=Lax"]
    plain = await claimed_instance(gw.store, gw.endpoint, app="plain")  # serves at its root: paths go under
    async with gw.http.get(gw.url + f"/i/{plain.id}/", params=[("h", "Set-Cookie:e=5; Path=/api/")]) as r:
        assert r.headers["Set-Cookie"] == f"e=5; Path=/i/{plain.id}/api"


async def test_origin_wide_response_headers_never_reach_the_browser(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    query = [("h", "Service-Worker-Allowed:/"), ("h", 'Clear-Site-Data:"cookies", "storage"'),
             ("h", "Strict-Transport-Security:max-age=99999999; includeSubDomains"), ("h", "X-Kept:yes")]
    async with gw.http.get(gw.url + f"/i/{instance.id}/sw.js", params=query) as r:
        assert r.status == 200
        for name in ("Service-Worker-Allowed", "Clear-Site-Data", "Strict-Transport-Security"):
            assert name not in r.headers
        assert r.headers["X-Kept"] == "yes"
        assert "Referrer-Policy" not in r.headers  # the instance's own answer: its own policy


async def test_location_of_a_strip_prefix_app_goes_back_into_its_prefix(gw: World) -> None:
    plain = await claimed_instance(gw.store, gw.endpoint, app="plain")
    echo = await claimed_instance(gw.store, gw.endpoint)
    cases = {
        "/login?next=/x": f"/i/{plain.id}/login?next=/x",
        f"http://{gw.host}/tree": f"http://{gw.host}/i/{plain.id}/tree",
        f"/i/{plain.id}/already": f"/i/{plain.id}/already",
        "relative/path": "relative/path",
        "https://example.org/out": "https://example.org/out",
        "//example.org/x": "//example.org/x",
    }
    for given, expected in cases.items():
        async with gw.http.get(gw.url + f"/i/{plain.id}/", params={"status": "302", "h": f"Location:{given}"},
                               allow_redirects=False) as r:
            assert r.headers["Location"] == expected, given
    async with gw.http.get(gw.url + f"/i/{echo.id}/", params={"status": "302", "h": "Location:/elsewhere"},
                           allow_redirects=False) as r:
        assert r.headers["Location"] == "/elsewhere"  # an app that knows its prefix is left alone


async def test_untrusted_forwarding_headers_and_gateway_cookies_never_reach_an_instance(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    sent = {"Forwarded": "for=1.2.3.4;host=evil", "X-Original-URL": "/admin", "X-Rewrite-URL": "/admin",
            "X-Forwarded-Server": "evil", "Cookie": "sp_browser=secret-of-the-gateway; mine=1; swarmpool-x=2"}
    async with gw.http.get(gw.url + f"/i/{instance.id}/", headers=sent) as r:
        seen = CIMultiDict((await r.json())["headers"])
    for name in ("Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server"):
        assert name not in seen
    assert seen["Cookie"] == "mine=1"
    async with gw.http.get(gw.url + f"/i/{instance.id}/", headers={"Cookie": "sp_browser=only"}) as r:
        assert "Cookie" not in (await r.json())["headers"]


async def test_gateway_pages_send_no_referrer(gw: World, claimer: Claimer) -> None:
    instance_id = new_instance_id()
    claimer.answer = lambda app: Claimed(id=instance_id, app=app, endpoint=gw.endpoint)
    for path in ("/", "/launch/echo", f"/i/{new_instance_id()}/", "/launch/nope"):
        async with gw.http.get(gw.url + path, allow_redirects=False) as r:
            assert r.headers.get("Referrer-Policy") == "no-referrer", path


# ---- WebSocket bounds ----


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _raw_websocket(w: World, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = w.host.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write((f"GET {path} HTTP/1.1\r\nHost: {w.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def test_an_oversized_websocket_message_closes_that_socket_only(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    async with gw.http.ws_connect(gw.url + f"/i/{instance.id}/ws") as other:
        await other.send_str("before")
        assert (await other.receive(timeout=5)).data == "before"
        reader, writer = await _raw_websocket(gw, f"/i/{instance.id}/ws")
        before = _rss()
        # one binary frame announcing 400 MiB, masked with a zero key, streamed from one 1 MiB buffer
        writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, 400 * 1024**2) + b"\0\0\0\0")
        block = bytes(1024**2)
        closing = asyncio.ensure_future(reader.readexactly(4))
        sent = 0
        try:
            while not closing.done() and sent < 64 * 1024**2:
                writer.write(block)
                await writer.drain()
                sent += len(block)
        except ConnectionError:
            pass
        frame = await asyncio.wait_for(closing, 5)
        writer.close()
        assert frame[0] == 0x88 and struct.unpack("!H", frame[2:4])[0] == 1009  # close: message too big
        assert _rss() - before < 16 * 1024**2, f"gateway grew by {(_rss() - before) >> 20} MiB"
        await other.send_str("after")  # the other session goes on
        assert (await other.receive(timeout=5)).data == "after"
    async with gw.http.ws_connect(gw.url + f"/i/{instance.id}/ws") as ws:
        await ws.send_str("x" * (WS_LIMIT + 1))
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == 1009


async def test_websockets_per_instance_are_capped(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    url = gw.url + f"/i/{instance.id}/ws"
    first = await gw.http.ws_connect(url)
    second = await gw.http.ws_connect(url)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect(url)
    assert refused.value.status == 429
    other = await claimed_instance(gw.store, gw.endpoint)  # the cap is per instance
    async with gw.http.ws_connect(gw.url + f"/i/{other.id}/ws") as ws:
        await ws.send_str("fine")
        assert (await ws.receive(timeout=5)).data == "fine"
    await first.close()
    deadline = time.monotonic() + 5
    while True:  # the slot frees once the gateway has seen the close
        try:
            third = await gw.http.ws_connect(url)
            break
        except aiohttp.WSServerHandshakeError:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    await third.close()
    await second.close()


# ---- timeouts: a slow client or a silent instance holds nothing for long ----


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> tuple[float, bytes]:
    """Read until the gateway closes the connection; how long it took and what it said."""
    started = time.monotonic()
    data = await asyncio.wait_for(reader.read(), seconds)
    return time.monotonic() - started, data


async def test_unfinished_headers_are_cut_after_the_keepalive_timeout(gw: World) -> None:
    host, port = gw.host.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /i/")  # half a request line, then nothing
    await writer.drain()
    took, _ = await _closed_within(reader, TIMEOUT + 2)
    writer.close()
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1.5

    reader, writer = await asyncio.open_connection(host, int(port))  # idle after a request: same bound
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {gw.host}\r\n\r\n".encode())
    await writer.drain()
    took, data = await _closed_within(reader, TIMEOUT + 2)
    writer.close()
    assert data.startswith(b"HTTP/1.1 200") and took < TIMEOUT + 1.5


async def test_a_stalled_request_body_is_cut(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    host, port = gw.host.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST /i/{instance.id}/upload HTTP/1.1\r\nHost: {gw.host}\r\nContent-Length: 1000\r\n\r\n"
                 .encode() + b"x" * 10)
    await writer.drain()
    started = time.monotonic()
    status = await asyncio.wait_for(reader.readline(), TIMEOUT + 5)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408"), status
    assert time.monotonic() - started < TIMEOUT + 1  # (aiohttp then lingers a bounded 10 s at most)


async def test_a_silent_instance_is_cut_after_the_upstream_read_timeout(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    started = time.monotonic()
    async with gw.http.get(gw.url + f"/i/{instance.id}/stall") as r:
        assert r.status == 200
        assert await r.content.readline() == b"first\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(r.read(), TIMEOUT + 5)
    assert time.monotonic() - started < TIMEOUT + 2


# ---- subdomain mode: one origin per instance ----


@pytest.fixture
async def sub(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[World]:
    async with world(nc, subjects, store, catalogue(instance_domain=DOMAIN)) as w:
        yield w


async def test_subdomain_mode_sends_each_instance_to_its_own_host(sub: World, claimer: Claimer) -> None:
    instance = await claimed_instance(sub.store, sub.endpoint)
    claimer.answer = lambda app: Claimed(id=instance.id, app=app, endpoint=sub.endpoint, deep_link="tree")
    async with sub.http.get(sub.url + "/launch/echo", allow_redirects=False) as r:
        assert r.status == 303
        location = r.headers["Location"]
    label = host_label(instance.id)
    assert location == f"http://{label}.{DOMAIN}/i/{instance.id}/tree"
    assert instance.id not in label and instance.id[:8] not in label  # the host name does not carry the id
    async with sub.http.get(sub.url + "/launch/echo", allow_redirects=False,
                            headers={"X-Forwarded-Proto": "https"}) as r:  # behind the TLS front
        assert r.headers["Location"].startswith(f"https://{label}.{DOMAIN}/")

    own = {"Host": f"{label}.{DOMAIN}"}
    async with sub.http.get(sub.url + f"/i/{instance.id}/tree", headers=own) as r:
        assert r.status == 200
        assert (await r.json())["headers"]["Host"] == f"{label}.{DOMAIN}"
    async with sub.http.get(sub.url + f"/i/{instance.id}/tree?a=1", allow_redirects=False) as r:
        assert r.status == 307  # the main host serves no instance: an old link goes to the right host
        assert r.headers["Location"] == f"http://{label}.{DOMAIN}/i/{instance.id}/tree?a=1"
    async with sub.http.post(sub.url + f"/i/{instance.id}/tree", allow_redirects=False) as r:
        assert r.status == 404

    other = await claimed_instance(sub.store, sub.endpoint)
    for path, headers in [(f"/i/{other.id}/tree", own),  # B's id on A's host
                          ("/", own), ("/launch/echo", own), ("/healthz", own),  # gateway pages: main host only
                          (f"/i/{instance.id}/tree", {"Host": f"{host_label(other.id)}.{DOMAIN}"})]:
        async with sub.http.get(sub.url + path, headers=headers, allow_redirects=False) as r:
            assert r.status == 404, (path, headers)
    assert claimer.requests == ["echo", "echo"]


# ---- logs ----


async def test_full_ids_never_reach_the_logs(gw: World, caplog: pytest.LogCaptureFixture) -> None:
    instance = await claimed_instance(gw.store, f"127.0.0.1:{_closed_port()}")
    caplog.set_level(logging.DEBUG)
    host, port = gw.host.split(":")
    for raw in (f"GET /i/{instance.id}/\x00\xff HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"),
                f"GET /i/{instance.id}/ HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n".encode(),
                f"BREW /i/{instance.id}/ HTCPCP/1.0\r\n\r\n".encode()):
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(raw)
        await writer.drain()
        await asyncio.wait_for(reader.read(), 5)
        writer.close()
    async with gw.http.get(gw.url + f"/i/{instance.id}/") as r:  # upstream refused: logged, the session ended
        assert r.status == 404
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await gw.http.ws_connect(gw.url + f"/i/{instance.id}/ws")
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in caplog.records if r.levelno >= logging.INFO)
    assert instance.id not in text


def _closed_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
