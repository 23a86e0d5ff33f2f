"""`swarmpool report` as a real process after a scripted lecture on a real stack: a gateway records clicks,
waiting-room visits and page loads in the event log, and the report counts them exactly."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import msgspec
import pytest

from swarmpool.bus.messages import Visit
from swarmpool.bus.subjects import Subjects
from swarmpool.launcher import serve_dashboard
from swarmpool.natsd import free_port
from tests.integration.test_admin import admin, swarmpool_cli
from bench.students import Attendance, wait_turn
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker

FRAMED = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "cross-site",
          "Referer": "https://moodle.example.org/course/7"}


def class_now() -> tuple[str, str]:
    """A schedule entry of a class under way (began 30 minutes ago, UTC), and its label."""
    start = datetime.now(timezone.utc) - timedelta(minutes=30)
    end = start + timedelta(hours=2)
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[start.weekday()]
    entry = f'schedule = [{{ days = ["{day}"], start = "{start:%H:%M}", end = "{end:%H:%M}", size = 1 }}]'
    return entry, f"{day} {start:%H:%M}-{end:%H:%M}"


def catalogue(entry: str) -> str:
    # one instance at most: a second student waits until the first session ends; one session per browser
    return echo_catalogue(size=1, max_=1).replace(
        "max_instances = 120", "max_instances = 120\nper_browser_limit = 1\ncost_per_instance_hour = 2.0", 1
    ).replace('deep_link = "hello"', f'deep_link = "hello"\n{entry}', 1)


async def report(nats_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    return await swarmpool_cli(nats_url, namespace, "report", *args)


async def click(browser: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str]:
    async with browser.get(url, allow_redirects=False, headers=headers) as response:
        await response.read()
        return response.status, response.headers.get("Location", "")


async def load_page(browser: aiohttp.ClientSession, base: str, location: str) -> None:
    """The student's page: an HTML page of the session (the gateway's settle signal)."""
    async with browser.get(base + location.rsplit("/", 1)[0] + "/page") as response:
        assert response.status == 200 and response.content_type == "text/html"


async def test_a_scripted_lecture_gives_exact_counts(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    subjects = Subjects(namespace)
    entry, label = class_now()
    async with running_stack(nats_server.url, namespace, catalogue(entry), docker=False) as s:
        (tmp_path / "catalogue.toml").write_text(catalogue(entry))  # on the bus, as `up` stores it: the cost per hour
        code, _, err = await admin(nats_server.url, namespace, "reload", str(tmp_path / "catalogue.toml"))
        assert code == 0, err
        visits: list[Visit] = []

        async def seen(msg: Any) -> None:
            visits.append(msgspec.json.decode(msg.data, type=Visit))
        await s.nc.subscribe(subjects.visits_all(), cb=seen)
        await s.nc.flush()
        first = (await s.wait_ready(1))[0]
        launch = f"{s.url}/launch/echo"
        began = time.time()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as a, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as b, \
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as framer:
            status, location = await click(a, launch)
            assert status == 303 and first.id in location
            await load_page(a, s.url, location)
            assert (await click(a, launch))[0] == 429  # a failure: this browser holds its one session
            assert (await click(framer, launch, **FRAMED))[0] == 403  # a failure: a course page not allowed
            waited_from = time.time()
            status, ticket = await click(b, launch)  # a place in line, twice (the second click keeps it)
            assert status == 303 and "/ticket/" in ticket
            assert await click(b, launch) == (303, ticket)
            holding = asyncio.create_task(wait_turn(b, s.url, ticket, Attendance("b")))  # its page holds the place
            code, _, err = await admin(nats_server.url, namespace, "retire", first.id[:6])
            assert code == 0, err
            assert await asyncio.wait_for(holding, timeout=120)
            status, location = await click(b, s.url + ticket)  # the page goes to its own URL: 303 to the session
            waited_until = time.time()
            assert status == 303 and first.id not in location
            await load_page(b, s.url, location)
        await wait_for(lambda: sum(v.kind == "page" for v in visits) == 2 and len(visits) == 8, timeout=20,
                       what="the gateway's 6 clicks and 2 page loads on the bus")
        assert all(first.id not in msgspec.json.encode(v).decode() for v in visits)  # hashes, never the id

        code, out, err = await report(nats_server.url, namespace, "--json", "--app", "echo")
        assert code == 0, err
        echo = json.loads(out)["apps"]["echo"]
        assert {k: echo[k] for k in ("served", "clicks", "sessions", "pages", "waiting_visits", "failures",
                                     "peak_concurrency")} == {
            "served": 2, "clicks": 6, "sessions": 2, "pages": 2, "waiting_visits": 2,
            "failures": {"frame": 1, "limit": 1}, "peak_concurrency": 1}
        assert echo["click_to_page"]["n"] == 2 and 0 < echo["click_to_page"]["max"] < time.time() - began
        assert 0 < echo["longest_wait"] <= waited_until - waited_from  # B: its first waiting room to its session
        assert echo["minutes_without_ready"] > 0  # while B waited
        assert echo["instance_hours"] > 0 and echo["cost"] == round(echo["instance_hours"] * 2.0, 2)
        assert echo["session_length"]["n"] == 2 and sum(echo["session_bins"].values()) == 2  # the open one: to now

        code, out, err = await report(nats_server.url, namespace, "--json", "--lecture", label)
        assert code == 0, err
        assert json.loads(out)["lecture"] == label and json.loads(out)["apps"]["echo"]["served"] == 2

        ops = free_port()  # the dashboard shows the same for the last lecture, with its plot
        async with serve_dashboard(s.nc, namespace, "127.0.0.1", ops, tmp_path, None, s.url) as login, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(login) as response:
                page = await response.text()
        assert f"Last lecture: {label}" in page and 'data-app="echo" data-served="2"' in page
        assert '<svg id="lecture-plot"' in page and "frame 1, limit 1" in page

        code, out, err = await report(nats_server.url, namespace, "--csv", "--since", "10m")
        assert code == 0, err
        (row,) = list(csv.DictReader(io.StringIO(out)))
        assert (row["app"], row["served"], row["waiting_visits"]) == ("echo", "2", "2")
        code, out, err = await report(nats_server.url, namespace, "--until", "1d")
        assert code == 0 and "no events in this window" in out, err
        code, _, err = await report(nats_server.url, namespace, "--lecture", "nothing of that name")
        assert code == 2 and "labelled 'nothing of that name'" in err
