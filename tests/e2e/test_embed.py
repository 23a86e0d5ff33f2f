"""In a real browser, an app inside another site's page (a course page): a page the app's
`frame_ancestors` allows shows a session in its frame; any other page gets nothing, and nothing
is claimed.

Two sites, as a course platform and the gateway are: the gateway is addressed as `localhost`, the
framing pages are served by small aiohttp servers on `127.0.0.1` (another site to the browser).
Headless Debian Chromium against the real gateway (path mode) and real NATS; claims are counted
where the claimers get them (the bus subject), answered by a stand-in claimer.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec
import pytest
from aiohttp import web
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, FrameAncestor, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway import make_app
from swarmpool.gateway.app import make_runner
from bench.support import goto
from tests.integration.test_gateway import Claimer, claimed_instance, claimer  # noqa: F401

LANDED = "<!doctype html><title>session</title><p id=\"who\">session page</p>"


def course_page(gateway: str, app: str) -> str:
    """What a teacher pastes into a course page (docs/teachers-embed.md), pointing at `app`."""
    return (f"<!doctype html><title>course</title><h1>Week 3</h1>"
            f"<iframe id=\"app\" src=\"{gateway}/launch/{app}\" width=\"800\" height=\"600\" "
            f"allow=\"clipboard-read; clipboard-write; fullscreen\" referrerpolicy=\"strict-origin-when-cross-origin\">"
            f"</iframe>")


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


@dataclass
class Sites:
    gateway: str  # http://localhost:<port>
    allowed: str  # http://127.0.0.1:<port>, in the app's frame_ancestors
    other: str  # http://127.0.0.1:<another port>: another origin, not listed
    endpoint: str  # the stand-in instance


async def _launches(url: str, app: str) -> dict[str, float]:
    """The gateway's launch outcomes for `app`, from its /metrics."""
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as r:
        text = await r.text()
    found = re.findall(r'swarmpool_gateway_launches_total\{app="' + app + r'",outcome="([a-z_]+)"\} ([0-9.]+)', text)
    return {outcome: float(n) for outcome, n in found}


@pytest.fixture
async def sites(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[Sites]:
    pages: dict[str, str] = {}

    async def course(request: web.Request) -> web.Response:
        return web.Response(text=pages.get(request.path, "no such page"), content_type="text/html")

    async def instance(request: web.Request) -> web.Response:
        return web.Response(text=LANDED, content_type="text/html",
                            headers={"X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"})

    lms = web.Application()
    lms.router.add_get("/{tail:.*}", course)
    other = web.Application()
    other.router.add_get("/{tail:.*}", course)
    up = web.Application()
    up.router.add_get("/{tail:.*}", instance)
    runners = []
    try:
        for server in (lms, other, up):
            runner, port = await _serve(server)
            runners.append((runner, port))
        allowed, elsewhere, up_port = (f"http://127.0.0.1:{p}" for _, p in runners)
        catalogue = Catalogue(settings=Settings(claim_wait=Duration(0.3)), apps={
            "embed": AppSpec(name="embed", image="echo:latest", port=8000, deep_link="page",
                             frame_ancestors=(FrameAncestor(allowed),)),
            "echo": AppSpec(name="echo", image="echo:latest", port=8000, deep_link="page"),
        })
        gateway, gw_port = await _serve_gateway(nc, subjects, store, catalogue)
        runners.append((gateway, gw_port))
        url = f"http://localhost:{gw_port}"
        for app in ("embed", "echo"):
            pages[f"/{app}"] = course_page(url, app)
        yield Sites(gateway=url, allowed=allowed, other=elsewhere, endpoint=up_port.removeprefix("http://"))
    finally:
        for runner, _ in reversed(runners):
            await runner.cleanup()


async def _serve_gateway(nc: NATS, subjects: Subjects, store: InstanceStore,
                         catalogue: Catalogue) -> tuple[web.AppRunner, int]:
    runner = make_runner(make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=catalogue), catalogue,
                         shutdown_timeout=1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, int(runner.addresses[0][1])


async def _frame_of(page: Any, origin: str, timeout: float = 15.0) -> Any:
    """The child frame once it has committed a document of `origin` (None: it never did)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            if frame is not page.main_frame and frame.url.startswith(origin):
                return frame
        await asyncio.sleep(0.05)
    return None


async def test_an_allowed_course_page_shows_a_session_in_its_frame(
        sites: Sites, browser: Any, store: InstanceStore, claimer: Claimer) -> None:  # noqa: F811
    fresh = await claimed_instance(store, sites.endpoint, app="embed")
    claimer.answer = lambda app: Claimed(id=fresh.id, app=app, endpoint=sites.endpoint, deep_link="page")
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await goto(page, f"{sites.allowed}/embed", wait_until="load", timeout=15_000)
        frame = await _frame_of(page, f"{sites.gateway}/i/{fresh.id}/page")
        assert frame is not None, [f.url for f in page.frames]
        await frame.wait_for_selector("#who", timeout=15_000)
        assert await frame.inner_text("#who") == "session page"  # the instance's own "frame-ancestors 'none'" gave way
        assert claimer.requests == ["embed"]
        assert (await _launches(sites.gateway, "embed")).get("claimed") == 1
    finally:
        await context.close()


async def test_the_waiting_room_inside_an_allowed_frame_retries_into_a_session(
        sites: Sites, browser: Any, store: InstanceStore, claimer: Claimer) -> None:  # noqa: F811
    """The waiting room's own retry is a navigation of the frame by the gateway's page (same-origin,
    no Referer): it claims, since the browser showed that page only inside an allowed parent."""
    fresh = await claimed_instance(store, sites.endpoint, app="embed")
    claimer.answer = lambda app: ClaimRefused(app=app, reason="empty", retry_after=1)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await goto(page, f"{sites.allowed}/embed", wait_until="load", timeout=15_000)
        waiting = await _frame_of(page, f"{sites.gateway}/launch/embed")
        assert waiting is not None and "Just a moment" in await waiting.inner_text("h1")
        claimer.answer = lambda app: Claimed(id=fresh.id, app=app, endpoint=sites.endpoint, deep_link="page")
        assert await _frame_of(page, f"{sites.gateway}/i/{fresh.id}/page") is not None
        assert claimer.requests[-1] == "embed" and len(claimer.requests) >= 2
        assert (await _launches(sites.gateway, "embed")).get("claimed") == 1
    finally:
        await context.close()


@pytest.mark.parametrize(("where", "app"), [
    ("other", "embed"),  # a page of another origin than the listed one
    ("allowed", "echo"),  # the listed page framing an app that lists nobody
])
async def test_any_other_framing_page_is_refused_and_claims_nothing(
        sites: Sites, browser: Any, store: InstanceStore, claimer: Claimer,  # noqa: F811
        where: str, app: str) -> None:
    fresh = await claimed_instance(store, sites.endpoint, app=app)
    claimer.answer = lambda name: Claimed(id=fresh.id, app=name, endpoint=sites.endpoint, deep_link="page")
    refused: list[str] = []
    context = await browser.new_context()
    try:
        page = await context.new_page()
        page.on("console", lambda msg: refused.append(msg.text) if "frame-ancestors" in msg.text else None)
        await goto(page, f"{getattr(sites, where)}/{app}", wait_until="load", timeout=15_000)
        deadline = time.monotonic() + 15
        while (await _launches(sites.gateway, app)).get("frame", 0) < 1:  # the frame's request was answered
            assert time.monotonic() < deadline, await _launches(sites.gateway, app)
            await asyncio.sleep(0.05)
        while not refused:  # and the browser refused to show the answer in that frame
            assert time.monotonic() < deadline, [f.url for f in page.frames]
            await asyncio.sleep(0.05)
        assert await _frame_of(page, sites.gateway, timeout=0.5) is None  # nothing of the gateway is shown
        assert claimer.requests == []  # not one claim on the bus
        assert (await _launches(sites.gateway, app)).get("claimed", 0) == 0
    finally:
        await context.close()


class ClaimRequests:
    """Every claim request as the claimers get it: which browser (the gateway's cookie) asked."""

    def __init__(self) -> None:
        self.browsers: list[str] = []

    async def on_request(self, msg: Any) -> None:
        self.browsers.append(msgspec.json.decode(msg.data, type=ClaimRequest).browser)


@pytest.mark.parametrize("https", [True, False])
async def test_the_browser_cookie_works_in_an_allowed_frame_over_https_only(
        sites: Sites, browser: Any, store: InstanceStore, claimer: Claimer, nc: NATS,  # noqa: F811
        subjects: Subjects, https: bool) -> None:
    """Behind an HTTPS front (X-Forwarded-Proto from a trusted proxy), the frame keeps its partitioned
    cookie: two launches in the course page are one browser, a tab on the gateway's own site another
    (another partition). Over plain HTTP the frame keeps no cookie: every launch is a new browser."""
    requests = ClaimRequests()
    sub = await nc.subscribe(subjects.claim_all(), cb=requests.on_request)
    context = await browser.new_context(extra_http_headers={"X-Forwarded-Proto": "https"} if https else {})
    try:
        page = await context.new_page()
        for n in (1, 2):
            fresh = await claimed_instance(store, sites.endpoint, app="embed")
            claimer.answer = lambda app, i=fresh.id: Claimed(id=i, app=app, endpoint=sites.endpoint, deep_link="page")
            await goto(page, f"{sites.allowed}/embed", wait_until="load", timeout=15_000)
            assert await _frame_of(page, f"{sites.gateway}/i/{fresh.id}/page") is not None
            assert len(requests.browsers) == n
        await goto(page, f"{sites.gateway}/launch/embed", wait_until="load", timeout=15_000)  # a tab of its own
        assert len(requests.browsers) == 3
        first, second, tab = requests.browsers
        assert first and second and tab
        if https:
            assert first == second != tab
        else:
            assert len({first, second, tab}) == 3
    finally:
        await context.close()
        await sub.unsubscribe()
