"""In a real browser, only a click takes a session: a page on the origin that fetches `/launch/`,
loads it as an image, prefetches or prerenders it claims nothing; the student's click still does.

Headless Debian Chromium against the real gateway (path mode) and real NATS; claims are counted
where the claimers would get them (the bus subject), answered by a stand-in claimer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Claimed
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from bench.support import goto
from tests.integration.test_gateway import Claimer, claimed_instance, claimer  # noqa: F401

CATALOGUE = Catalogue(settings=Settings(claim_wait=Duration(0.3)),
                      apps={"echo": AppSpec(name="echo", image="echo:latest", port=8000, deep_link="page")})

# what a student's code (a notebook cell's output) can put on a page of the shared origin
HOSTILE = """<!doctype html><title>hostile</title>
<link rel="prefetch" href="/launch/echo?via=prefetch">
<script type="speculationrules">{"prerender": [{"source": "list", "urls": ["/launch/echo?via=prerender"]}]}</script>
<p id="who">hostile page</p>
<img id="img" src="/launch/echo?via=img">
<a id="go" href="/launch/echo">Start a session</a>
<script>
window.fetched = fetch('/launch/echo?via=fetch').then(r => r.status, e => 'error:' + e.name);
</script>
"""
LANDED = "<!doctype html><title>session</title><p id=\"who\">session page</p>"


async def _instance(request: web.Request) -> web.Response:
    if request.path.endswith("/hostile"):
        return web.Response(text=HOSTILE, content_type="text/html")
    return web.Response(text=LANDED, content_type="text/html")


async def _launches(url: str) -> dict[str, float]:
    """The gateway's launch outcomes for echo, from its /metrics."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    found = re.findall(r'swarmpool_gateway_launches_total\{app="echo",outcome="([a-z_]+)"\} ([0-9.]+)', text)
    return {outcome: float(n) for outcome, n in found}


@pytest.fixture
async def origin(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[dict[str, Any]]:
    up = web.Application()
    up.router.add_get("/{tail:.*}", _instance)
    up_runner = web.AppRunner(up, shutdown_timeout=0.5)
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    runner = make_runner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE), CATALOGUE,
                         shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    endpoint = f"127.0.0.1:{up_runner.addresses[0][1]}"
    try:
        yield {"url": f"http://127.0.0.1:{runner.addresses[0][1]}", "endpoint": endpoint}
    finally:
        await runner.cleanup()
        await up_runner.cleanup()


async def test_fetch_image_prefetch_and_prerender_claim_nothing_while_a_click_does(
        origin: dict[str, Any], browser: Any, store: InstanceStore, claimer: Claimer) -> None:  # noqa: F811
    url = origin["url"]
    hostile = await claimed_instance(store, origin["endpoint"])
    fresh = await claimed_instance(store, origin["endpoint"])  # what the claimer hands out
    claimer.answer = lambda app: Claimed(id=fresh.id, app=app, endpoint=origin["endpoint"], deep_link="page")
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await goto(page, f"{url}/i/{hostile.id}/hostile", wait_until="load", timeout=15_000)
        assert await page.evaluate("window.fetched") == 403
        # the image finished (the page's load event waits for it) and is broken: a 403, no picture
        assert await page.evaluate("[document.getElementById('img').complete, document.getElementById('img').naturalWidth]") == [True, 0]
        deadline = time.monotonic() + 15
        while (await _launches(url)).get("prefetch", 0) < 1:  # the browser's prefetch reached the gateway
            assert time.monotonic() < deadline, f"no prefetch seen: {await _launches(url)}"
            await asyncio.sleep(0.1)
        outcomes = await _launches(url)
        assert outcomes.get("not_navigation", 0) >= 2 and outcomes.get("claimed", 0) == 0, outcomes
        assert claimer.requests == []  # not one claim on the bus

        await page.click("#go")  # the student's click
        await page.wait_for_url(f"{url}/i/{fresh.id}/page", timeout=15_000)
        assert await page.inner_text("#who") == "session page"
        assert claimer.requests == ["echo"]
    finally:
        await context.close()
