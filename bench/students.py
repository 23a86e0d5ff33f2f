"""A student as a plain HTTP + WebSocket client (not a browser): click, wait in line as a page with script would
(the held connection, then the 303 of the ticket URL), load the instance's page, open its WebSocket, interact.

Used by `bench/bench_lecture.py` and the queue's tests; everything on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

from bench.support import instance_id_of


@dataclass
class Attendance:
    """What one student saw."""

    name: str
    clicked_at: float = 0.0
    ticket: str = ""  # the ticket URL's path when the click was queued
    positions: list[int] = field(default_factory=list)  # the places the held connection reported
    turn_at: float | None = None  # the held connection said "your turn"
    served_at: float | None = None  # the instance answered the student's page (never a queue page)
    instance: str = ""
    echoed: bool = False  # the WebSocket answered
    outcome: str = ""  # served, full, gone, error: ...
    status: int = 0  # the last HTTP status seen


def new_browser() -> aiohttp.ClientSession:
    """One browser: its own cookie jar (kept for 127.0.0.1 too), no automatic redirects in the calls below."""
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))


async def click(http: aiohttp.ClientSession, base: str, app: str, me: Attendance) -> str | None:
    """GET /launch/<app>: the Location it answers with (an instance or a ticket), or None (the outcome says why)."""
    me.clicked_at = time.monotonic()
    async with http.get(f"{base}/launch/{app}", allow_redirects=False) as r:
        await r.read()
        me.status = r.status
        if r.status == 303:
            return r.headers["Location"]
        me.outcome = "full" if r.status == 503 and "full" in (await r.text()).lower() else f"status {r.status}"
        return None


async def wait_turn(http: aiohttp.ClientSession, base: str, ticket: str, me: Attendance,
                    on_position: asyncio.Event | None = None) -> bool:
    """Hold the waiting page's connection until it says "turn" (True) or "gone" (False)."""
    async with http.get(f"{base}{ticket}/wait", headers={"Accept": "text/event-stream"}) as r:
        if r.status != 200:
            me.status = r.status
            return False
        name = ""
        async for raw in r.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: ") and name == "position":
                me.positions.append(int(json.loads(line[6:])["position"]))
                if on_position is not None:
                    on_position.set()
            elif line.startswith("data: ") and name in ("turn", "gone"):
                if name == "turn":
                    me.turn_at = time.monotonic()
                return name == "turn"
    return False


async def attend(http: aiohttp.ClientSession, base: str, app: str, me: Attendance, *, message: str = "hello",
                 on_position: asyncio.Event | None = None) -> Attendance:
    """Click, wait in line if queued (as a page with script does), load the session's page, open its WebSocket
    and send one message."""
    location = await click(http, base, app, me)
    if location is None:
        return me
    if "/ticket/" in location:
        me.ticket = location
        while True:
            async with http.get(base + location, allow_redirects=False) as page:  # the waiting page itself
                await page.read()
                me.status = page.status
                if page.status == 303:
                    location = page.headers["Location"]
                    break
                if page.status != 200:
                    me.outcome = "gone"
                    return me
            if not await wait_turn(http, base, me.ticket, me, on_position):
                me.outcome = "gone"
                return me
            location = me.ticket  # the script navigates to its own URL: 303 to the session
            async with http.get(base + location, allow_redirects=False) as turn:
                await turn.read()
                me.status = turn.status
                if turn.status == 303:
                    location = turn.headers["Location"]
                    break
                location = me.ticket  # lost the instance to a racing claim: first in line again
    me.instance = instance_id_of(location)  # before its page: a page that fails names the instance it was for
    async with http.get(base + location, allow_redirects=False) as page:
        body = await page.read()
        me.status = page.status
        if page.status != 200:
            me.outcome = f"error: instance page {page.status}"
            return me
    me.served_at = time.monotonic()
    try:
        answered = json.loads(body).get("id")
        if answered != me.instance:
            me.outcome = "error: another instance answered"
            return me
    except ValueError:
        pass  # an app whose page is not the echo app's JSON
    async with http.ws_connect(f"{base}/i/{me.instance}/ws") as ws:
        await ws.send_str(message)
        me.echoed = (await ws.receive_str(timeout=10)) == message
    me.outcome = "served"
    return me
