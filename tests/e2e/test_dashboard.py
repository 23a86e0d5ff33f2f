"""The operators' dashboard of a real `swarmpool up`, in headless Chromium: the one-time login link
`up` prints, the session cookie, the pools as bars, the plot, events, and buttons that change the pool;
the students' gateway answers a public /status with aggregates only."""

from __future__ import annotations

import json
import re
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from swarmpool.natsd import free_port
from bench.support import goto
from tests.stack import cli_process, echo_catalogue, wait_for

pytestmark = pytest.mark.docker


async def test_dashboard_login_bars_and_buttons(tmp_path: Path, namespace: str, echo_image: str,
                                                browser: Any) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=1, max_=4))
    port, ops = free_port(), free_port()
    state = tmp_path / "state"
    async with AsyncExitStack() as stack:
        _, lines = await cli_process(stack, "up", "--catalogue", str(catalogue), "--port", str(port),
                                     "--dashboard-port", str(ops), "--state-dir", str(state),
                                     "--namespace", namespace)
        context = await browser.new_context()
        stack.push_async_callback(context.close)
        await wait_for(lambda: any("echo 1/1 ready" in line for line in lines), timeout=90, what="warm-up")
        (login,) = [m.group(1) for line in lines if "dashboard" in line
                    and (m := re.search(r"(http://127\.0\.0\.1:\d+/login\?token=\S+)", line))]
        assert login.startswith(f"http://127.0.0.1:{ops}/")
        key = state / "dashboard.key"
        assert key.stat().st_mode & 0o777 == 0o600

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{ops}/") as r:
                assert r.status == 401  # no session, no page

            page = await context.new_page()
            await goto(page, login)
            assert page.url == f"http://127.0.0.1:{ops}/"
            (cookie,) = await context.cookies()
            assert cookie["name"].startswith("sp_")  # the students' gateway never forwards it to an instance
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            async with http.get(login, allow_redirects=False) as r:
                assert r.status == 403  # the link worked once

            await page.wait_for_selector('tr.pool[data-app="echo"][data-ready="1"]')
            assert await page.locator('.bar[data-app="echo"] .ready').count() == 1
            assert await page.locator("svg#plot polyline").count() == 2
            scripts = await page.eval_on_selector_all("script[src], link[href], img[src]", "els => els.length")
            assert scripts == 0  # nothing from a CDN (nor anywhere else)

            # scale to 2 with the button: the pool grows, and the live bars show it
            await page.fill('form:has(button[value="scale"][data-app="echo"]) input[name="size"]', "2")
            await page.click('button[value="scale"][data-app="echo"]')
            await page.wait_for_selector("#done")
            await page.wait_for_selector('tr.pool[data-app="echo"][data-ready="2"]', timeout=60_000)
            assert "scale echo to 2" in await page.inner_text("#events")

            # pause: the students' gateway refuses new claims
            await page.click('button[value="pause"][data-app="echo"]')
            await page.wait_for_selector('tr.pool[data-app="echo"][data-paused="true"]')
            async with http.get(f"http://127.0.0.1:{port}/launch/echo", allow_redirects=False) as r:
                assert r.status == 503

            # a forged form (no CSRF token) changes nothing
            cookies = {c["name"]: c["value"] for c in await context.cookies()}
            async with aiohttp.ClientSession(cookies=cookies) as forged:
                async with forged.post(f"http://127.0.0.1:{ops}/act", data={"verb": "resume", "app": "echo"}) as r:
                    assert r.status == 403

            # the public status: aggregates per app, no ids
            async with http.get(f"http://127.0.0.1:{port}/status") as r:
                assert r.status == 200
                body = await r.text()
            status = json.loads(body)["apps"]["echo"]
            assert status["ready"] == 2 and status["status"] == "available"
            assert not re.search(r"[a-z2-7]{26}", body)
