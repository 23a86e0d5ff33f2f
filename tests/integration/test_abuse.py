"""One client must not drain the pools: unused claims retire early, a per-browser session limit,
link previews never claim, forged heartbeats are refused. Real gateway, functions, nats-server, swarm."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from yarl import URL

from swarmpool.bus.messages import Activity, Instance
from swarmpool.bus.wire import encode
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway.context import BROWSER_COOKIE
from tests.stack import Stack, echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker

SLACK = "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)"


def catalogue(*, size: int, limit: int = 3, unused: str = "30s") -> str:
    text = echo_catalogue(size=size, max_=size * 2)
    text = text.replace("max_instances = 120", f"max_instances = 120\nper_browser_limit = {limit}")
    return text.replace('max_lifetime = "2h"', f'max_lifetime = "2h"\nunused_grace = "{unused}"')


def instance_id(location: str) -> str:
    return location.split("/")[2]


def retire_reasons(s: Stack) -> dict[str, str]:
    """Instance id -> why it was retired, as the records say (filled while the test runs)."""
    reasons: dict[str, str] = {}

    def seen(old: Instance | None, new: Instance | None) -> None:
        if new is not None and new.state == "retiring":
            reasons[new.id] = new.reason

    s.store.on_change(seen)
    return reasons


async def test_unused_claim_retires_early_and_a_forged_heartbeat_cannot_keep_one(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, catalogue(size=3, unused="1s"), docker=False) as s:
        await s.wait_ready(3)
        reasons = retire_reasons(s)
        used, unused, forged = [(await s.launch()).headers["Location"] for _ in range(3)]
        async with s.http.get(s.url + used) as page:  # a student's first page load
            assert page.status == 200
        # a heartbeat claiming an open, busy connection, dated far in the future (it would freeze the record)
        forged_id = instance_id(forged)
        await s.nc.publish(Subjects(namespace).activity("echo", forged_id), encode(Activity(
            app="echo", id=forged_id, at=1e18, connections=1, traffic=True, gateway="forger")))
        await wait_for(lambda: s.store.get("echo", instance_id(unused)) is None, timeout=15,
                       what="retirement of a claim nobody used")
        await wait_for(lambda: s.store.get("echo", forged_id) is None, timeout=15,
                       what="retirement of a claim kept only by a forged heartbeat")
        assert reasons[instance_id(unused)].startswith("unused"), reasons
        assert reasons[forged_id].startswith("unused"), reasons
        kept = s.store.get("echo", instance_id(used))
        assert kept is not None and kept.instance.state == "claimed" and kept.instance.used
        assert "forger" not in kept.instance.gateway_heartbeats


async def test_one_browser_holds_at_most_the_limit_and_previews_never_claim(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, catalogue(size=5, limit=2), docker=False) as s:
        await s.wait_ready(5)
        launch = f"{s.url}/launch/echo"

        # link previews and crawlers: the app's description, no claim, no cookie; robots.txt keeps crawlers out
        for agent in (SLACK, "facebookexternalhit/1.1", "Mozilla/5.0 (compatible; Googlebot/2.1)"):
            async with s.http.get(launch, headers={"User-Agent": agent}, allow_redirects=False) as r:
                assert r.status == 200
                assert "<h1>Echo</h1>" in await r.text()
                assert BROWSER_COOKIE not in r.cookies
        assert len(s.records("claimed")) == 0 and len(s.records("ready")) == 5
        async with s.http.get(f"{s.url}/robots.txt") as r:
            assert r.status == 200
            lines = (await r.text()).splitlines()
        assert "Disallow: /launch/" in lines and "Disallow: /i/" in lines

        # a browser keeps the gateway's cookie (unsafe=True: the jar must accept a cookie from 127.0.0.1)
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:

            async def click(accept: str = "text/html") -> aiohttp.ClientResponse:
                async with browser.get(launch, allow_redirects=False, headers={"Accept": accept}) as r:
                    await r.read()
                    return r

            first = await click()
            assert first.status == 303
            cookie = first.cookies[BROWSER_COOKIE]
            assert cookie["httponly"] and cookie["path"] == "/launch/" and cookie["samesite"] == "Lax"
            # the cookie is the gateway's: the instance never sees it
            async with browser.get(s.url + first.headers["Location"]) as page:
                seen = await page.json()
            assert BROWSER_COOKIE not in seen["headers"].get("Cookie", "")

            # three clicks at once at one left below the limit: exactly one passes (no race)
            statuses = sorted(r.status for r in await asyncio.gather(click(), click(), click()))
            assert statuses == [303, 429, 429]
            mine = {r.id for r in s.records("claimed")}
            assert len(mine) == 2

            refused = await click()
            assert refused.status == 429
            assert "no-store" in refused.headers["Cache-Control"]
            async with browser.get(launch, allow_redirects=False) as r:
                page = await r.text()
            # one shared origin: any script on it could read this page, so it names the sessions, links none
            assert "/i/" not in page and not any(i in page for i in mine)
            async with browser.get(launch, allow_redirects=False, headers={"Accept": "application/json"}) as r:
                assert r.status == 429
                body = await r.json()
            assert body["status"] == "limit" and body["limit"] == 2 and len(body["sessions"]) == 2
            assert not any(i in str(body) for i in mine)

            # a page on the origin sets a second sp_browser (path=/, the key it knows): neither is believed
            key = browser.cookie_jar.filter_cookies(URL(launch))[BROWSER_COOKIE].value
            doubled = {"Cookie": f"{BROWSER_COOKIE}={key}; {BROWSER_COOKIE}={key}"}
            async with s.http.get(launch, allow_redirects=False, headers={**doubled, "Accept": "application/json"}) as r:
                assert r.status == 303  # a cookie-less click: its own fresh session, nothing of that key's
                answer = (await r.read()).decode() + r.headers["Location"]
            assert not any(i in answer for i in mine)
            extra = instance_id(r.headers["Location"])

            # the student closed the tabs: the form ends the browser's sessions, and the next click claims
            async with browser.post(launch, data={"token": body["end"]["token"]}, allow_redirects=False,
                                    headers={"Origin": s.url, "Accept": "application/json"}) as r:
                assert r.status == 200 and (await r.json())["ended"] == 2
            await wait_for(lambda: not any(s.store.get("echo", i) for i in mine), timeout=30,
                           what="the browser's sessions retired")
            assert (await click()).status == 303
            assert s.store.get("echo", extra) is not None  # another browser's session is untouched

        await s.wait_ready(5)
        # clients without cookies (tests, benchmarks, a class behind one NAT address) are not limited together
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as anonymous:
            for _ in range(3):
                async with anonymous.get(launch, allow_redirects=False) as r:
                    assert r.status == 303, await r.text()
                    assert BROWSER_COOKIE in r.cookies  # offered, never kept by this client
        assert len(s.records("claimed")) == 5


async def test_ending_sessions_answers_once_they_are_retiring_not_when_docker_has_removed_them(
        nats_server, namespace, echo_image, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, catalogue(size=2, limit=1), docker=False) as s:
        await s.wait_ready(2)
        launch = f"{s.url}/launch/echo"
        json_answer = {"Accept": "application/json"}
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(launch, allow_redirects=False) as r:
                assert r.status == 303
                mine = instance_id(r.headers["Location"])
            async with browser.get(launch, allow_redirects=False, headers=json_answer) as r:
                assert r.status == 429
                token = (await r.json())["end"]["token"]

            # Docker slow to remove services (a busy engine): every removal waits until the test lets it go
            held = asyncio.Event()
            removing: list[str] = []
            real_remove = s.swarm.remove

            async def slow_remove(service_id: str) -> bool:
                removing.append(service_id)
                await held.wait()
                return await real_remove(service_id)

            monkeypatch.setattr(s.swarm, "remove", slow_remove)
            try:
                async with browser.post(launch, data={"token": token}, allow_redirects=False,
                                        headers={"Origin": s.url, **json_answer}) as r:
                    assert r.status == 200, await r.text()  # not the gateway's 503 after RELEASE_WAIT
                    assert (await r.json())["ended"] == 1
                record = s.store.get("echo", mine)
                assert record is not None and record.instance.state == "retiring"  # marked, not yet removed
                await wait_for(lambda: len(removing) == 1, timeout=10, what="the removal under way")
                async with browser.get(launch, allow_redirects=False) as r:
                    assert r.status == 303  # the next click claims already
            finally:
                held.set()
            await wait_for(lambda: s.store.get("echo", mine) is None, timeout=30, what="the released session removed")
