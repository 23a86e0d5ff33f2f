"""In a real browser, the limit page's button works: a student at the per-browser limit presses
"End these sessions and start a new one", the gateway ends them, and the click that follows claims.

Headless Debian Chromium against the real gateway (path mode) and real NATS; a stand-in claimer
on the bus keeps one session per browser key (limit 1) and ends them on a release request. What
the test checks is what the browser sends (Origin, Sec-Fetch-*) and what the gateway does with it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest, Released, ReleaseRequest
from swarmpool.bus.wire import encode
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from bench.support import goto
from tests.integration.test_gateway import claimed_instance

CATALOGUE = Catalogue(settings=Settings(claim_wait=Duration(0.3), per_browser_limit=1),
                      apps={"echo": AppSpec(name="echo", image="echo:latest", port=8000, deep_link="page")})
LANDED = "<!doctype html><title>session</title><p id=\"who\">session page</p>"


@dataclass
class LimitClaimer:
    """Hands out the given ids in turn, at most one live session per browser key; a release ends them."""

    ids: list[str]
    endpoint: str
    held: dict[str, str] = field(default_factory=dict)  # browser key -> its session
    claims: list[str] = field(default_factory=list)  # the browser key of every claim request
    releases: list[str] = field(default_factory=list)

    async def on_claim(self, msg: Any) -> None:
        request = msgspec.json.decode(msg.data, type=ClaimRequest)
        self.claims.append(request.browser)
        if request.browser in self.held:
            reply: Any = ClaimRefused(app=request.app, reason="limit", sessions=[self.held[request.browser]])
        else:
            self.held[request.browser] = self.ids.pop(0)
            reply = Claimed(id=self.held[request.browser], app=request.app, endpoint=self.endpoint, deep_link="page")
        await msg.respond(encode(reply))

    async def on_release(self, msg: Any) -> None:
        request = msgspec.json.decode(msg.data, type=ReleaseRequest)
        self.releases.append(request.browser)
        ended = int(self.held.pop(request.browser, None) is not None)
        await msg.respond(encode(Released(app=request.app, ended=ended)))


@pytest.fixture
async def gateway(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[tuple[str, LimitClaimer]]:
    async def landed(request: web.Request) -> web.Response:
        return web.Response(text=LANDED, content_type="text/html")

    up = web.Application()
    up.router.add_get("/{tail:.*}", landed)
    up_runner = web.AppRunner(up, shutdown_timeout=0.5)
    await up_runner.setup()
    await web.TCPSite(up_runner, "127.0.0.1", 0).start()
    endpoint = f"127.0.0.1:{up_runner.addresses[0][1]}"
    ids = [(await claimed_instance(store, endpoint)).id for _ in range(2)]
    claimer = LimitClaimer(ids=list(ids), endpoint=endpoint)
    subs = [await nc.subscribe(subjects.claim_all(), cb=claimer.on_claim),
            await nc.subscribe(subjects.release_all(), cb=claimer.on_release)]
    runner = make_runner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=CATALOGUE), CATALOGUE,
                         shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", claimer
    finally:
        await runner.cleanup()
        for sub in subs:
            await sub.unsubscribe()
        await up_runner.cleanup()


async def test_the_limit_pages_button_ends_the_sessions_and_the_next_click_claims(
        gateway: tuple[str, LimitClaimer], browser: Any) -> None:
    url, claimer = gateway
    first, second = claimer.ids
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await goto(page, f"{url}/launch/echo", wait_until="load", timeout=15_000)
        assert page.url == f"{url}/i/{first}/page"  # the first click claims
        answer = await goto(page, f"{url}/launch/echo", wait_until="load", timeout=15_000)
        assert answer is not None and answer.status == 429  # at the limit: the page names the session
        assert first not in await page.content()

        async with page.expect_request(lambda r: r.method == "POST") as pressed:
            await page.click("button[type=submit]")  # the student presses the button
        await page.wait_for_url(f"{url}/i/{second}/page", timeout=15_000)  # ended, then a fresh claim
        assert await page.inner_text("#who") == "session page"
        key = claimer.claims[0]
        assert key and claimer.releases == [key] and claimer.claims == [key, key, key]
        sent = await (await pressed.value).all_headers()
        # the page's Referrer-Policy lets the browser name its origin (no-referrer made it "null")
        assert sent["origin"] == url and sent["sec-fetch-site"] == "same-origin"
        assert (sent["sec-fetch-mode"], sent["sec-fetch-dest"], sent["sec-fetch-user"]) == ("navigate", "document", "?1")
    finally:
        await context.close()
