"""One origin, many instances, in a real browser: what instance A sends cannot reach instance B.

Headless Debian Chromium against the real gateway (path mode), real KV records and a small
in-process upstream standing in for two students' instances that run hostile code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from bench.support import goto
from tests.integration.test_gateway import claimed_instance

CATALOGUE = Catalogue(settings=Settings(claim_wait=Duration(0.3)),
                      apps={"echo": AppSpec(name="echo", image="echo:latest", port=8000)})

PAGE = """<!doctype html><title>instance</title><p id="who">instance page</p>"""
# a hostile worker: answers every request it controls with its own page
WORKER = """self.addEventListener('install', () => self.skipWaiting());
self.addEventListener('activate', e => e.waitUntil(self.clients.claim()));
self.addEventListener('fetch', e => e.respondWith(new Response('<p id="who">HIJACKED</p>',
  {headers: {'Content-Type': 'text/html'}})));
"""
COOKIES = web.AppKey("cookies", list[tuple[str, str]])


async def _hostile(request: web.Request) -> web.StreamResponse:
    request.app[COOKIES].append((request.path, request.headers.get("Cookie", "")))
    if request.path.endswith("/sw.js"):
        return web.Response(text=WORKER, content_type="application/javascript",
                            headers={"Service-Worker-Allowed": "/"})
    response = web.Response(text=PAGE, content_type="text/html", headers={"Service-Worker-Allowed": "/"})
    response.headers.add("Set-Cookie", "stolen=from-a; Path=/")
    return response


@pytest.fixture
async def origin(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[dict[str, Any]]:
    up = web.Application()
    up[COOKIES] = []
    up.router.add_get("/{tail:.*}", _hostile)
    up_runner = web.AppRunner(up, shutdown_timeout=0.5)
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    runner = make_runner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE), CATALOGUE,
                         shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = f"127.0.0.1:{up_runner.addresses[0][1]}"
    try:
        yield {"url": f"http://127.0.0.1:{runner.addresses[0][1]}", "a": await claimed_instance(store, endpoint),
               "b": await claimed_instance(store, endpoint), "cookies": up[COOKIES]}
    finally:
        await runner.cleanup()
        await up_runner.cleanup()


async def _who(page: Any, url: str) -> str:
    await goto(page, url, wait_until="load", timeout=15_000)
    return str(await page.inner_text("#who"))


async def test_instance_a_reaches_neither_b_nor_the_gateway_pages(origin: dict[str, Any], browser: Any) -> None:
    url, a, b, cookies = origin["url"], origin["a"], origin["b"], origin["cookies"]
    context = await browser.new_context()
    try:
        page = await context.new_page()
        assert await _who(page, f"{url}/i/{a.id}/page") == "instance page"

        # A asks for a worker over the whole origin: refused, the gateway dropped Service-Worker-Allowed
        wide = await page.evaluate("""navigator.serviceWorker.register('sw.js', {scope: '/'})
            .then(() => 'registered', e => e.name)""")
        assert wide == "SecurityError"
        # within its own prefix it may have one, and it works there (so a hijack would show)
        own = await page.evaluate("""navigator.serviceWorker.register('sw.js')
            .then(r => navigator.serviceWorker.ready.then(() => r.scope), e => e.name)""")
        assert own == f"{url}/i/{a.id}/"
        assert await _who(page, f"{url}/i/{a.id}/page") == "HIJACKED"

        # B's pages and the gateway's own pages are beyond its reach
        assert await _who(page, f"{url}/i/{b.id}/page") == "instance page"
        assert await page.evaluate("navigator.serviceWorker.controller") is None
        await goto(page, f"{url}/launch/nope", wait_until="load")
        assert "No such app" in await page.content()
        await goto(page, f"{url}/", wait_until="load")
        assert "HIJACKED" not in await page.content()

        # the cookie A set with Path=/ went back to A only (B's own copy is confined to B)
        sent_to = {path.split("/")[2]: cookie for path, cookie in cookies}
        assert "stolen=from-a" in sent_to[a.id]
        assert "stolen" not in sent_to[b.id]
        jar = await context.cookies()
        assert sorted(c["path"] for c in jar if c["name"] == "stolen") == sorted([f"/i/{a.id}", f"/i/{b.id}"])
    finally:
        await context.close()
