"""The gateway keeps instances from reaching each other and bounds what one client may cost.

Real nats-server and KV records, the real gateway on a loopback port, small in-process upstreams,
raw sockets where a client misbehaves below HTTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import struct
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest, Released, ReleaseRequest
from swarmpool.bus.wire import encode
from swarmpool.bus.spec import AppSpec, ByteSize, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from swarmpool.gateway.context import GATEWAY
from swarmpool.gateway.launch import end_token
from swarmpool.gateway.origin import host_label
from swarmpool.ids import new_instance_id
from tests.fixtures import wait_for
from tests.integration.test_gateway import Claimer, claimed_instance, claimer  # noqa: F401
from tests.integration.test_nginx import Upstream as NginxUpstream
from tests.integration.test_nginx import running_nginx

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
    app: web.Application


@asynccontextmanager
async def world(nc: NATS, subjects: Subjects, store: InstanceStore, cat: Catalogue) -> AsyncIterator[World]:
    up = web.Application()
    up.router.add_route("*", "/{tail:.*}", _upstream)
    up_runner = web.AppRunner(up, shutdown_timeout=0.5)
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    app = make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=cat)
    runner = make_runner(app, cat, shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            yield World(url=f"http://{host}", host=host, endpoint=f"127.0.0.1:{up_runner.addresses[0][1]}",
                        http=http, store=store, app=app)
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


# every header the issue names (and the earlier three): an instance must not act on the whole origin
ORIGIN_WIDE_SENT = {
    "Service-Worker-Allowed": "/", "Clear-Site-Data": '"cookies", "storage"',
    "Strict-Transport-Security": "max-age=99999999; includeSubDomains",
    "NEL": '{"report_to":"spy","max_age":31536000,"include_subdomains":true}',
    "Report-To": '{"group":"spy","max_age":31536000,"endpoints":[{"url":"https://spy.example/r"}]}',
    "Reporting-Endpoints": 'spy="https://spy.example/r"', "Alt-Svc": 'h2="spy.example:443"; ma=86400',
    "Origin-Agent-Cluster": "?0", "Accept-CH": "Sec-CH-UA-Full-Version-List", "Critical-CH": "Sec-CH-UA-Model",
    "Set-Login": "logged-in", "Speculation-Rules": '"/i/x/rules.json"', "Public-Key-Pins": 'pin-sha256="x"; max-age=9',
    "Expect-CT": "max-age=86400, enforce",
    "Use-As-Dictionary": 'match="/*", id="spy"',  # a compression dictionary for every URL of the origin
}


async def test_origin_wide_response_headers_never_reach_the_browser(gw: World) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    query = [("h", f"{name}:{value}") for name, value in ORIGIN_WIDE_SENT.items()] + [("h", "X-Kept:yes")]
    async with gw.http.get(gw.url + f"/i/{instance.id}/sw.js", params=query) as r:
        assert r.status == 200
        assert [name for name in ORIGIN_WIDE_SENT if name in r.headers] == []
        assert r.headers["X-Kept"] == "yes"
        assert "Referrer-Policy" not in r.headers  # the instance's own answer: its own policy
    plain = await claimed_instance(gw.store, gw.endpoint, app="plain")  # a strip-prefix app too
    async with gw.http.get(gw.url + f"/i/{plain.id}/", params=query) as r:
        assert [name for name in ORIGIN_WIDE_SENT if name in r.headers] == []


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
            "X-Forwarded-Server": "evil", "X-Forwarded-Host": "evil.example", "X-Forwarded-Port": "1",
            "Cookie": "sp_browser=secret-of-the-gateway; mine=1; swarmpool-x=2; __Host-sp_browser=secret"}
    async with gw.http.get(gw.url + f"/i/{instance.id}/", headers=sent) as r:
        seen = CIMultiDict((await r.json())["headers"])
    for name in ("Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server", "X-Forwarded-Port"):
        assert name not in seen
    # even from loopback (a trusted proxy by default), X-Forwarded-Host is the Host the gateway saw
    assert seen["X-Forwarded-Host"] == gw.host and seen["Host"] == gw.host
    assert seen["Cookie"] == "mine=1"
    async with gw.http.get(gw.url + f"/i/{instance.id}/", headers={"Cookie": "sp_browser=only"}) as r:
        assert "Cookie" not in (await r.json())["headers"]


FORGED = {"X-Forwarded-For": "203.0.113.66", "X-Real-IP": "203.0.113.66", "X-Forwarded-Proto": "https",
          "X-Forwarded-Host": "evil.example"}


async def test_forged_forwarding_headers_from_a_client_that_is_no_proxy_never_reach_the_instance(
        nc: NATS, subjects: Subjects, store: InstanceStore) -> None:
    # the test client connects from loopback: with no trusted proxy, it is a client like any other
    async with world(nc, subjects, store, catalogue(trusted_proxies=[])) as w:
        instance = await claimed_instance(w.store, w.endpoint)
        async with w.http.get(w.url + f"/i/{instance.id}/", headers=FORGED) as r:
            seen = CIMultiDict((await r.json())["headers"])
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"] and seen.getall("X-Real-IP") == ["127.0.0.1"]
    assert seen["X-Forwarded-Proto"] == "http"
    assert seen.getall("X-Forwarded-Host") == [w.host] and seen["Host"] == w.host


async def test_through_real_nginx_forged_forwarding_headers_never_reach_the_instance(
        gw: World, tmp_path: Path) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    gateway_port = int(gw.host.rsplit(":", 1)[1])
    with running_nginx(NginxUpstream(port=gateway_port, app=web.Application()), tmp_path / "nginx") as front:
        async with gw.http.get(front.url + f"/i/{instance.id}/", headers=FORGED) as r:
            assert r.status == 200
            seen = CIMultiDict((await r.json())["headers"])
    # nginx sets (never appends to) X-Forwarded-For; the gateway believes it from loopback, its trusted proxy
    assert seen.getall("X-Forwarded-For") == ["127.0.0.1"] and seen.getall("X-Real-IP") == ["127.0.0.1"]
    assert seen["X-Forwarded-Proto"] == "http"
    host = front.url.removeprefix("http://").split(":")[0]  # nginx forwards $host: the public host, no port
    assert seen["Host"] == host and seen.getall("X-Forwarded-Host") == [host]


async def test_gateway_pages_send_no_referrer(gw: World, claimer: Claimer) -> None:
    instance_id = new_instance_id()
    claimer.answer = lambda app: Claimed(id=instance_id, app=app, endpoint=gw.endpoint)
    for path in ("/", "/launch/echo", f"/i/{new_instance_id()}/", "/launch/nope"):
        async with gw.http.get(gw.url + path, allow_redirects=False) as r:
            assert r.headers.get("Referrer-Policy") == "no-referrer", path


# ---- /launch/: what a click is, and what the limit page hands out ----

NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none",
            "Sec-Fetch-User": "?1"}


# what a browser sends when the student presses the limit page's button
SUBMIT = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document",
          "Sec-Fetch-User": "?1"}


@pytest.mark.parametrize(("headers", "claims", "status"), [
    ({}, True, 303),  # a client that says nothing (curl, an old browser, plain HTTP): as before
    (NAVIGATE, True, 303),  # a tab's navigation
    ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"}, False, 403),  # fetch()
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image", "Sec-Fetch-Site": "same-origin"}, False, 403),  # <img>
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "same-origin"}, False, 403),
    ({**NAVIGATE, "Sec-Purpose": "prefetch"}, False, 403),  # <link rel=prefetch>, speculation rules
    ({**NAVIGATE, "Sec-Purpose": "prefetch;prerender"}, False, 403),
    ({"Purpose": "prefetch"}, False, 403),  # older browsers' prefetch
])
async def test_launch_claims_only_for_a_tabs_navigation(gw: World, claimer: Claimer, headers: dict[str, str],
                                                        claims: bool, status: int) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint)
    claimer.answer = lambda app: Claimed(id=instance.id, app=app, endpoint=gw.endpoint)
    async with gw.http.get(gw.url + "/launch/echo", headers=headers, allow_redirects=False) as r:
        assert r.status == status
        assert "no-store" in r.headers["Cache-Control"]
        if not claims:
            assert instance.id not in await r.text() and "Set-Cookie" not in r.headers
    assert claimer.requests == (["echo"] if claims else [])


class ClaimRequests:
    """Every claim request as the claimers get it (beside the stand-in claimer that answers)."""

    def __init__(self) -> None:
        self.seen: list[ClaimRequest] = []

    async def on_request(self, msg: Any) -> None:
        self.seen.append(msgspec.json.decode(msg.data, type=ClaimRequest))


async def test_the_limit_page_of_a_shared_origin_names_sessions_without_handing_out_their_urls(
        gw: World, claimer: Claimer, nc: NATS, subjects: Subjects) -> None:
    mine = [await claimed_instance(gw.store, gw.endpoint) for _ in range(2)]
    claimer.answer = lambda app: ClaimRefused(app=app, reason="limit", sessions=[i.id for i in mine])
    requests = ClaimRequests()
    sub = await nc.subscribe(subjects.claim_all(), cb=requests.on_request)
    cookie = {"Cookie": "sp_browser=" + "k" * 22}
    try:
        async with gw.http.get(gw.url + "/launch/echo", headers=cookie, allow_redirects=False) as r:
            assert r.status == 429 and "no-store" in r.headers["Cache-Control"]
            page = await r.text()
        assert "/i/" not in page and not any(i.id in page or i.id[:8] in page for i in mine)
        assert page.count("<li>") == 2 and 'method="post"' in page and 'name="token"' in page
        async with gw.http.get(gw.url + "/launch/echo", headers={**cookie, "Accept": "application/json"}) as r:
            assert r.status == 429
            body = await r.json()
            text = json.dumps(body)
        assert "/i/" not in text and not any(i.id in text for i in mine)
        assert body["status"] == "limit" and len(body["sessions"]) == 2
        assert body["end"]["method"] == "POST" and body["end"]["url"] == "/launch/echo" and body["end"]["token"]

        # a second sp_browser (set by a page on the origin with path=/): neither counts, no key travels
        twice = {"Cookie": "sp_browser=" + "k" * 22 + "; sp_browser=" + "a" * 22}
        async with gw.http.get(gw.url + "/launch/echo", headers=twice, allow_redirects=False) as r:
            assert "Set-Cookie" not in r.headers
        await wait_for(lambda: len(requests.seen) == 3, what="three claim requests", timeout=5, interval=0.02)
        assert requests.seen[0].browser and requests.seen[0].browser == requests.seen[1].browser
        assert requests.seen[2].browser == ""
    finally:
        await sub.unsubscribe()


async def test_ending_the_sessions_needs_the_cookie_its_token_and_the_same_origin(
        gw: World, nc: NATS, subjects: Subjects) -> None:
    asked: list[ReleaseRequest] = []

    async def on_release(msg: Any) -> None:
        asked.append(msgspec.json.decode(msg.data, type=ReleaseRequest))
        await msg.respond(encode(Released(app="echo", ended=2)))

    sub = await nc.subscribe(subjects.release_all(), cb=on_release)
    value = "k" * 22
    token = end_token(value)
    own = {"Cookie": f"sp_browser={value}", "Origin": gw.url, **SUBMIT}
    try:
        refused = [
            ({**own, "Sec-Fetch-User": ""}, {"token": token}, 403),  # a script's form.submit(): no user gesture
            ({**own, "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, {"token": token}, 403),  # fetch()
            ({**own, "Sec-Fetch-Dest": "iframe"}, {"token": token}, 403),  # a form targeting a frame
            ({"Cookie": own["Cookie"], "Origin": "null"}, {"token": token}, 403),  # null, nothing vouches for it
            ({**own, "Cookie": ""}, {"token": token}, 400),  # no cookie
            ({**own, "Cookie": f"sp_browser={value}; sp_browser={value}"}, {"token": token}, 400),  # twice
            (own, {"token": end_token("x" * 22)}, 403),  # another browser's token
            (own, {}, 403),
            ({**own, "Origin": "https://evil.example"}, {"token": token}, 403),  # another site posts the form
            ({**own, "Sec-Fetch-Site": "cross-site"}, {"token": token}, 403),
        ]
        for headers, form, status in refused:
            async with gw.http.post(gw.url + "/launch/echo", headers=headers, data=form,
                                    allow_redirects=False) as r:
                assert r.status == status, (headers, form)
        assert asked == []
        async with gw.http.post(gw.url + "/launch/echo", headers=own, data={"token": token},
                                allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/launch/echo"  # then a fresh click
        # Chromium under Referrer-Policy: no-referrer sends Origin: null; Sec-Fetch-Site vouches for it
        async with gw.http.post(gw.url + "/launch/echo", headers={**own, "Origin": "null"}, data={"token": token},
                                allow_redirects=False) as r:
            assert r.status == 303
        # a client that sends no Fetch Metadata at all (curl, plain HTTP): the origin and token decide
        async with gw.http.post(gw.url + "/launch/echo", headers={"Cookie": own["Cookie"], "Origin": gw.url},
                                data={"token": token}, allow_redirects=False) as r:
            assert r.status == 303
        assert [(a.app, len(a.browser)) for a in asked] == [("echo", 32)] * 3
    finally:
        await sub.unsubscribe()


async def test_a_bad_end_sessions_body_is_a_4xx_never_a_500_and_ends_nothing(
        gw: World, nc: NATS, subjects: Subjects) -> None:
    asked: list[ReleaseRequest] = []

    async def on_release(msg: Any) -> None:
        asked.append(msgspec.json.decode(msg.data, type=ReleaseRequest))
        await msg.respond(encode(Released(app="echo", ended=1)))

    sub = await nc.subscribe(subjects.release_all(), cb=on_release)
    value = "k" * 22
    token = end_token(value)
    own = {"Cookie": f"sp_browser={value}", "Origin": gw.url, **SUBMIT}
    form = "application/x-www-form-urlencoded"

    async def chunked(size: int) -> AsyncIterator[bytes]:
        yield f"token={token}&pad=".encode()
        for _ in range(size // 1024):
            yield b"x" * 1024

    try:
        cases: list[tuple[dict[str, str], Any, int]] = [
            ({"Content-Type": form + "; charset=bogus"}, f"token={'0' * 32}".encode(), 403),  # charset: ignored
            ({"Content-Type": "multipart/form-data; boundary=b"},
             f'--b\r\nContent-Disposition: form-data; name="token"\r\n\r\n{token}\r\n--b--\r\n'.encode(), 400),
            ({"Content-Type": "text/plain"}, f"token={token}".encode(), 400),
            ({"Content-Type": form}, chunked(10 * 1024), 413),  # no Content-Length: the size is still bounded
            ({"Content-Type": form}, f"token={token}&pad={'x' * 5000}".encode(), 413),
            ({"Content-Type": form}, f"token={token}&a=1&b=2&c=3&d=4".encode(), 400),  # more than 4 fields
            ({"Content-Type": form}, b"token=\xff\xfe", 400),  # not UTF-8
        ]
        for headers, body, status in cases:
            async with gw.http.post(gw.url + "/launch/echo", headers={**own, **headers}, data=body,
                                    allow_redirects=False) as r:
                assert r.status == status, headers
        host, port = gw.host.split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        started = time.monotonic()
        writer.write((f"POST /launch/echo HTTP/1.1\r\nHost: {gw.host}\r\nCookie: sp_browser={value}\r\n"
                      f"Content-Type: {form}\r\nContent-Length: 100\r\n\r\ntoken=").encode())  # then nothing
        head = await asyncio.wait_for(reader.readline(), TIMEOUT + 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 408") and time.monotonic() - started < TIMEOUT + 2
        assert asked == []
        async with gw.http.post(gw.url + "/launch/echo", headers={**own, "Content-Type": form},
                                data=f"token={token}".encode(), allow_redirects=False) as r:
            assert r.status == 303
        assert len(asked) == 1
    finally:
        await sub.unsubscribe()


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


async def test_a_reload_of_trusted_proxies_reaches_the_old_link_redirect_too(sub: World) -> None:
    instance = await claimed_instance(sub.store, sub.endpoint)
    label = host_label(instance.id)
    forged = {"X-Forwarded-Proto": "https"}
    async with sub.http.get(sub.url + f"/i/{instance.id}/tree", headers=forged, allow_redirects=False) as r:
        assert r.headers["Location"] == f"https://{label}.{DOMAIN}/i/{instance.id}/tree"  # loopback: trusted
    sub.app[GATEWAY].use(catalogue(instance_domain=DOMAIN, trusted_proxies=[]), "v2")  # what admin reload does
    async with sub.http.get(sub.url + f"/i/{instance.id}/tree", headers=forged, allow_redirects=False) as r:
        assert r.headers["Location"] == f"http://{label}.{DOMAIN}/i/{instance.id}/tree"  # no longer believed


async def test_with_per_instance_origins_the_limit_page_names_the_sessions_without_links_too(
        sub: World, claimer: Claimer) -> None:
    # code on <label>.<instance_domain> can plant sp_browser with Domain=<parent> in a victim's browser
    # (a key it knows): whatever key the limit counts by, its page hands out no capability
    mine = [await claimed_instance(sub.store, sub.endpoint) for _ in range(2)]
    claimer.answer = lambda app: ClaimRefused(app=app, reason="limit", sessions=[i.id for i in mine])
    planted = {"Cookie": "sp_browser=" + "k" * 22}
    async with sub.http.get(sub.url + "/launch/echo", headers=planted, allow_redirects=False) as r:
        assert r.status == 429
        page = await r.text()
    async with sub.http.get(sub.url + "/launch/echo", headers={**planted, "Accept": "application/json"}) as r:
        text = await r.text()
    for answer in (page, text):
        assert "/i/" not in answer and DOMAIN not in answer
        assert not any(i.id in answer or i.id[:8] in answer or host_label(i.id) in answer for i in mine)
    assert page.count("<li>") == 2 and 'name="token"' in page


async def test_over_https_the_browser_cookie_is_host_only_and_a_planted_one_is_not_read(
        sub: World, claimer: Claimer, nc: NATS, subjects: Subjects) -> None:
    instance = await claimed_instance(sub.store, sub.endpoint)
    claimer.answer = lambda app: Claimed(id=instance.id, app=app, endpoint=sub.endpoint, deep_link="tree")
    requests = ClaimRequests()
    sub_claims = await nc.subscribe(subjects.claim_all(), cb=requests.on_request)
    https = {"X-Forwarded-Proto": "https"}  # behind the TLS front (loopback: a trusted proxy)
    planted = "k" * 22
    try:
        async with sub.http.get(sub.url + "/launch/echo", headers={**https, "Cookie": f"sp_browser={planted}"},
                                allow_redirects=False) as r:
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
        # __Host-: the browser refuses it from any other host and with a Domain, so a page on
        # <label>.<instance_domain> cannot plant one, and it is never sent to an instance's host
        name, _, rest = cookie.partition("=")
        value = rest.split(";", 1)[0]
        attributes = {a.strip().split("=", 1)[0].lower(): a.strip() for a in rest.split(";")[1:]}
        assert name == "__Host-sp_browser" and {"secure", "httponly", "path"} <= set(attributes)
        assert attributes["path"] == "Path=/" and "domain" not in attributes
        async with sub.http.get(sub.url + "/launch/echo", headers={**https, "Cookie": f"__Host-sp_browser={value}"},
                                allow_redirects=False) as r:
            assert "Set-Cookie" not in r.headers  # its own cookie came back: kept
        await wait_for(lambda: len(requests.seen) == 2, what="two claim requests", timeout=5, interval=0.02)
        assert requests.seen[0].browser == requests.seen[1].browser  # the new cookie's key, not the planted one's
        assert requests.seen[0].browser != hashlib.sha256(planted.encode()).hexdigest()[:32]
        # over plain HTTP nothing changes: sp_browser, Path=/launch/
        async with sub.http.get(sub.url + "/launch/echo", allow_redirects=False) as r:
            assert r.headers["Set-Cookie"].startswith("sp_browser=") and "Path=/launch/" in r.headers["Set-Cookie"]
    finally:
        await sub_claims.unsubscribe()


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
