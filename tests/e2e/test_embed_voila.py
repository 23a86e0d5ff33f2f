"""The real Voila demo inside an allowed course page's frame: jupyter_server's own
`frame-ancestors 'self'` gives way to the app's list, and behind HTTPS (its cookies made
`SameSite=None; Secure; Partitioned`) the notebook's kernel answers over its WebSocket inside the frame.

The whole stack (functions, real Docker swarm, the gateway addressed as `localhost`); the course
page on `127.0.0.1`; an HTTPS front stood in for by `X-Forwarded-Proto: https` from loopback (a
trusted proxy by default), since this machine has no certificate for either name.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from bench.support import goto, VOILA_APP, voila_catalogue
from tests.e2e.support import voila_browser_check
from tests.e2e.test_embed import _frame_of, _serve, course_page
from tests.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

EXECUTED_OUTPUT = re.compile(r"After 20 years at 5\.0% growth: 2,653")


@pytest.fixture
async def course_site() -> AsyncIterator[tuple[str, dict[str, str]]]:
    pages: dict[str, str] = {}

    async def course(request: web.Request) -> web.Response:
        return web.Response(text=pages.get(request.path, "no such page"), content_type="text/html")

    site = web.Application()
    site.router.add_get("/{tail:.*}", course)
    runner, port = await _serve(site)
    try:
        yield f"http://127.0.0.1:{port}", pages
    finally:
        await runner.cleanup()


@pytest.fixture
async def stack(nats_server: Any, module_namespace: str, voila_image: str,
                course_site: tuple[str, dict[str, str]]) -> AsyncIterator[Stack]:
    origin, _ = course_site
    text = re.sub(r'^deep_link = .*$', f'deep_link = ""\nframe_ancestors = ["{origin}"]',
                  voila_catalogue(size=1, max_=2), count=1, flags=re.MULTILINE)
    async with running_stack(nats_server.url, module_namespace, text) as s:
        yield s


async def test_the_voila_demo_runs_inside_an_allowed_course_page(
        stack: Stack, course_site: tuple[str, dict[str, str]], browser: Any) -> None:
    origin, pages = course_site
    gateway = stack.url.replace("127.0.0.1", "localhost")
    pages["/week3"] = course_page(gateway, VOILA_APP)
    check = voila_browser_check()
    await stack.wait_ready(1, timeout=180)
    context = await browser.new_context(extra_http_headers={"X-Forwarded-Proto": "https"})
    try:
        page = await context.new_page()
        await goto(page, f"{origin}/week3", wait_until="load", timeout=30_000)
        frame = await _frame_of(page, f"{gateway}/i/", timeout=60)
        assert frame is not None, [f.url for f in page.frames]
        await frame.wait_for_selector(check.HANDLE, state="visible", timeout=90_000)
        await frame.wait_for_selector(check.OUTPUT, state="visible", timeout=90_000)
        before = (await frame.inner_text(check.OUTPUT)).strip()
        assert EXECUTED_OUTPUT.search(before), before
        await frame.locator(check.HANDLE).focus()
        for _ in range(3):
            await frame.locator(check.HANDLE).press("ArrowRight")
        # the kernel's answer over the proxied WebSocket, inside the third-party frame
        await frame.wait_for_function("([sel, old]) => { const e = document.querySelector(sel);"
                                      " return e && e.innerText.trim() !== old; }",
                                      arg=[check.OUTPUT, before], timeout=60_000)
        instance_id = frame.url.split("/i/", 1)[1].split("/", 1)[0]
        record = stack.store.get(VOILA_APP, instance_id)
        assert record is not None and record.instance.state == "claimed" and record.instance.used
    finally:
        await context.close()
