"""The shared static cache through the real gateway, real NATS and real KV records, with one
in-process upstream per instance (the same image id): what reaches which instance, and what not."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp import web
from multidict import CIMultiDict
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Activity, Instance
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.ids import instance_prefix, new_instance_id

PLAIN = {"Accept-Encoding": "identity"}
IMAGE = "sha256:" + "ab" * 32
OTHER_IMAGE = "sha256:" + "cd" * 32
SCRIPT = b"/* app */\n" + b"function f(x) { return x * 2; }\n" * 400

CATALOGUE = Catalogue(
    settings=Settings(claim_wait=Duration(0.3), heartbeat_interval=Duration(0.2)),
    apps={"echo": AppSpec(name="echo", image="echo:latest", port=8000, static_paths=["static/"]),
          "plain": AppSpec(name="plain", image="plain:latest", port=8000, strip_prefix=True,
                           static_paths=["static/"])},
)


@dataclass
class Upstream:
    """One instance: counts the requests it got per path below its prefix."""

    label: str
    endpoint: str = ""
    seen: Counter[str] = field(default_factory=Counter)


def _upstream_app(upstream: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.path
        relative = path.split("/", 3)[3] if path.startswith("/i/") else path.lstrip("/")
        upstream.seen[relative] += 1
        if relative == "static/app.js":
            # what a student could have changed in a claimed instance: never what others get
            body = SCRIPT if upstream.label == "ready" else b"/* changed by a student */"
            return web.Response(body=body, content_type="application/javascript")
        if relative == "static/cookie.js":
            response = web.Response(text="x", content_type="application/javascript")
            response.set_cookie("secret", upstream.label)
            return response
        if relative == "static/lab.js":  # as jupyter_server serves labextension files
            return web.Response(body=SCRIPT, content_type="application/javascript",
                                headers={"Cache-Control": "no-cache"})
        if relative == "static/ident.js":  # jupyter_server: an anonymous identity for a cookie-less request
            response = web.Response(body=SCRIPT, content_type="application/javascript")
            if "ident" not in request.cookies:
                response.set_cookie("ident", "anon-" + upstream.label, httponly=True)
            return response
        if relative == "static/nostore.js":
            return web.Response(text="x", content_type="application/javascript",
                                headers={"Cache-Control": "no-store"})
        if relative == "other/app.js":
            return web.Response(text="dynamic", content_type="application/javascript")
        if relative == "":
            return web.Response(text="<html>notebook</html>", content_type="text/html")
        raise web.HTTPNotFound()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@asynccontextmanager
async def serving(upstream: Upstream) -> AsyncIterator[Upstream]:
    runner = web.AppRunner(_upstream_app(upstream), shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    upstream.endpoint = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield upstream
    finally:
        await runner.cleanup()


async def record(store: InstanceStore, upstream: Upstream, state: str, image: str = IMAGE,
                 app: str = "echo") -> Instance:
    now = time.time()
    ready = await store.create(Instance(id=new_instance_id(), app=app, state="ready", endpoint=upstream.endpoint,
                                        created_at=now, ready_at=now, image=image))
    if state == "ready":
        return ready.instance
    claimed = await store.cas(ready, msgspec.structs.replace(ready.instance, state="claimed", claimed_at=now))
    return claimed.instance


@dataclass
class Pool:
    url: str
    http: aiohttp.ClientSession
    ready: Upstream
    a: Upstream
    b: Upstream
    ids: dict[str, str]  # label -> instance id


@asynccontextmanager
async def gateway(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[tuple[str, aiohttp.ClientSession]]:
    app = make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE, host_label="gw-static")
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            yield f"http://127.0.0.1:{runner.addresses[0][1]}", http
    finally:
        await runner.cleanup()


@pytest.fixture
async def pool(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[Pool]:
    async with (serving(Upstream("ready")) as ready, serving(Upstream("a")) as a, serving(Upstream("b")) as b):
        ids = {"ready": (await record(store, ready, "ready")).id,
               "a": (await record(store, a, "claimed")).id,
               "b": (await record(store, b, "claimed")).id}
        async with gateway(nc, subjects, store) as (url, http):
            yield Pool(url=url, http=http, ready=ready, a=a, b=b, ids=ids)


async def fetch(pool: Pool, label: str, relative: str, **headers: str) -> tuple[int, bytes, CIMultiDict[str]]:
    url = pool.url + instance_prefix(pool.ids[label]) + relative
    async with pool.http.get(url, headers={"Accept-Encoding": "identity", **headers}) as r:
        return r.status, await r.read(), CIMultiDict(r.headers)


async def test_a_static_file_is_fetched_once_per_image_and_served_to_every_student(
        pool: Pool, nc: NATS, subjects: Subjects) -> None:
    beats: list[Activity] = []
    decode = msgspec.json.Decoder(Activity).decode

    async def on_beat(msg: Msg) -> None:
        beats.append(decode(msg.data))

    sub = await nc.subscribe(subjects.activity("echo", pool.ids["b"]), cb=on_beat)
    try:
        firsts = await asyncio.gather(*(fetch(pool, label, "static/app.js") for label in ("a", "a", "b", "b")))
        for status, body, _ in firsts:
            assert status == 200 and body == SCRIPT  # the ready instance's file, never a student's
        for _ in range(3):
            status, body, headers = await fetch(pool, "b", "static/app.js")
            assert status == 200 and body == SCRIPT and "max-age" in headers["Cache-Control"]
        assert pool.ready.seen["static/app.js"] == 1
        assert pool.a.seen["static/app.js"] == 0 and pool.b.seen["static/app.js"] == 0
        deadline = time.monotonic() + 5
        while not any(m.traffic for m in beats):  # served from the cache, still the student's activity
            assert time.monotonic() < deadline, "no heartbeat for a student served from the cache"
            await asyncio.sleep(0.05)
    finally:
        await sub.unsubscribe()


async def test_junk_query_strings_from_one_session_never_keep_out_the_variant_students_request(pool: Pool) -> None:
    slots = CATALOGUE.settings.static_cache_variants
    for n in range(slots + 4):  # student a fills the path's slots with junk, and asks for more
        for _ in range(2):
            assert (await fetch(pool, "a", f"static/app.js?junk={n}"))[0] == 200
    assert pool.ready.seen["static/app.js"] == slots  # the first junk filled every slot
    # the real, versioned URL: a's first ask ties with the junk and goes to a's own instance; b's is a
    # second session: more asked for than any junk, it takes a slot (one fill from the ready instance)
    await fetch(pool, "a", "static/app.js?v=1.2.3")
    status, body, _ = await fetch(pool, "b", "static/app.js?v=1.2.3")
    assert status == 200 and body == SCRIPT
    assert pool.ready.seen["static/app.js"] == slots + 1
    for n in range(100, 120):  # more junk, each asked for twice: it never pushes the real variant out
        for _ in range(2):
            await fetch(pool, "a", f"static/app.js?junk={n}")
    for label in ("a", "b", "b", "a"):
        status, body, _ = await fetch(pool, label, "static/app.js?v=1.2.3")
        assert status == 200 and body == SCRIPT  # from the cache: the image's file, for both students
    assert pool.ready.seen["static/app.js"] == slots + 1 and pool.b.seen["static/app.js"] == 0


async def test_compressed_and_plain_clients_get_identical_content(pool: Pool) -> None:
    _, plain, plain_headers = await fetch(pool, "a", "static/app.js", **{"Accept-Encoding": "identity"})
    _, packed, packed_headers = await fetch(pool, "b", "static/app.js", **{"Accept-Encoding": "gzip, br"})
    assert "Content-Encoding" not in plain_headers and packed_headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed) == plain == SCRIPT
    assert len(packed) * 3 < len(plain)
    assert plain_headers["ETag"] != packed_headers["ETag"]  # two representations, two validators
    assert plain_headers["Vary"] == packed_headers["Vary"] == "Accept-Encoding"
    for etag in (plain_headers["ETag"], packed_headers["ETag"]):
        status, body, _ = await fetch(pool, "b", "static/app.js", **{"If-None-Match": etag})
        assert status == 304 and body == b""


async def test_no_cache_answers_are_shared_and_counted(pool: Pool) -> None:
    """jupyter_server marks every labextension file `no-cache`: one image, one answer, stored once."""
    for label in ("a", "b", "a", "b"):
        status, body, _ = await fetch(pool, label, "static/lab.js")
        assert status == 200 and body == SCRIPT
    assert pool.ready.seen["static/lab.js"] == 1
    assert pool.a.seen["static/lab.js"] == 0 and pool.b.seen["static/lab.js"] == 0
    await fetch(pool, "a", "static/nostore.js")
    async with pool.http.get(pool.url + "/metrics") as r:
        text = await r.text()
    assert 'swarmpool_gateway_static_cache_total{app="echo",outcome="hit"} 4.0' in text
    assert 'swarmpool_gateway_static_cache_total{app="echo",outcome="fill"} 2.0' in text  # lab.js, nostore.js
    assert 'swarmpool_gateway_static_cache_total{app="echo",outcome="pass"} 1.0' in text  # nostore.js


async def test_an_identity_cookie_for_the_fill_itself_is_answered_and_never_passed_on(pool: Pool) -> None:
    """The fill's cookie-less request gets an identity; asked again with it, the untouched
    instance sets none, and that answer is stored: students never see the fill's cookie."""
    for label in ("a", "b", "a"):
        status, body, headers = await fetch(pool, label, "static/ident.js")
        assert status == 200 and body == SCRIPT and "Set-Cookie" not in headers
    assert pool.ready.seen["static/ident.js"] == 2  # asked, then asked with its own cookie; stored
    assert pool.a.seen["static/ident.js"] == 0 and pool.b.seen["static/ident.js"] == 0


@pytest.mark.parametrize("relative", ["other/app.js", "static/cookie.js", "static/missing.js",
                                      "static/nostore.js"])
async def test_never_cached_outside_static_paths_with_set_cookie_or_not_200(pool: Pool, relative: str) -> None:
    for _ in range(2):
        await fetch(pool, "a", relative)
        status, _, headers = await fetch(pool, "b", relative)
        if relative == "static/cookie.js":
            assert "secret=b" in headers["Set-Cookie"]  # the student's own instance answered
    assert pool.a.seen[relative] == 2 and pool.b.seen[relative] == 2


async def test_a_miss_without_a_ready_instance_passes_through_uncached(
        nc: NATS, subjects: Subjects, store: InstanceStore) -> None:
    async with serving(Upstream("a")) as a, serving(Upstream("ready")) as other_ready:
        claimed = await record(store, a, "claimed")
        await record(store, other_ready, "ready", image=OTHER_IMAGE)  # another image: not a source
        async with gateway(nc, subjects, store) as (url, http):
            for _ in range(2):
                async with http.get(url + instance_prefix(claimed.id) + "static/app.js", headers=PLAIN) as r:
                    assert r.status == 200 and await r.read() == b"/* changed by a student */"
        assert a.seen["static/app.js"] == 2 and other_ready.seen["static/app.js"] == 0


async def test_strip_prefix_apps_are_cached_too(nc: NATS, subjects: Subjects, store: InstanceStore) -> None:
    async with serving(Upstream("ready")) as ready, serving(Upstream("a")) as a:
        await record(store, ready, "ready", app="plain")
        claimed = await record(store, a, "claimed", app="plain")
        async with gateway(nc, subjects, store) as (url, http):
            for _ in range(2):
                async with http.get(url + instance_prefix(claimed.id) + "static/app.js", headers=PLAIN) as r:
                    assert r.status == 200 and await r.read() == SCRIPT
        assert ready.seen["static/app.js"] == 1 and a.seen["static/app.js"] == 0


# ---- nginx compresses the rest of the text and passes compressed answers through ----


async def test_nginx_compresses_text_and_passes_compressed_answers_through(tmp_path: Path) -> None:
    from tests.integration.test_nginx import Upstream as NginxUpstream
    from tests.integration.test_nginx import running_nginx

    document = b'{"cells": [' + b'{"source": "print(1)"},' * 800 + b'{}]}'
    packed = gzip.compress(SCRIPT)

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/doc.json"):
            return web.Response(body=document, content_type="application/json")
        if request.path.endswith("/packed.js"):
            return web.Response(body=packed, content_type="application/javascript",
                                headers={"Content-Encoding": "gzip"})
        return web.Response(body=bytes(range(256)) * 40, content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        with running_nginx(NginxUpstream(port=runner.addresses[0][1], app=app), tmp_path) as front:
            async with aiohttp.ClientSession(auto_decompress=False) as http:
                async with http.get(front.url + "/i/abc/doc.json", headers={"Accept-Encoding": "gzip"}) as r:
                    assert r.headers["Content-Encoding"] == "gzip"
                    assert gzip.decompress(await r.read()) == document
                async with http.get(front.url + "/i/abc/doc.json", headers=PLAIN) as r:
                    assert "Content-Encoding" not in r.headers and await r.read() == document
                async with http.get(front.url + "/i/abc/packed.js", headers={"Accept-Encoding": "gzip"}) as r:
                    assert r.headers["Content-Encoding"] == "gzip" and await r.read() == packed  # not twice
                async with http.get(front.url + "/i/abc/x.png", headers={"Accept-Encoding": "gzip"}) as r:
                    assert "Content-Encoding" not in r.headers
    finally:
        await runner.cleanup()
