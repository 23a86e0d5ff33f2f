"""The operators' dashboard: its own aiohttp app on its own listener (never the students' origin),
holding the operator's bus credentials, behind a one-time login link and a signed session cookie.

It shows each pool live (ready / starting / in use / failed as bars), the last hour of pool depth
and claims per minute (inline SVG, samples kept in memory), the latest events, the last lecture's
report (`swarmpool report --lecture`) with a plot of its sessions and waits, and buttons for
scale, pause, resume, drain and reload (POST forms with the session's CSRF token). Everything is
inline: no script, style or font from anywhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import html
import logging
import secrets
import socket
import time
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
from aiohttp import web

from swarmpool.bus.client import Bus, BusError
from swarmpool.bus.messages import AdminEvent, AdminResult, AppStatus, ErrorReply, InstanceEvent, Requester, StatusRequest
from swarmpool.bus.operator import ask_admin, follow_events
from swarmpool.bus.subjects import Subjects
from swarmpool.bus.verbs import VERBS, Verb, request_from
from swarmpool.catalogue import CatalogueError
from swarmpool.files import write_private
from swarmpool.report import Point, Report, Spread
from swarmpool.report_cli import last_lecture_report
from swarmpool.ids import short_id

log = logging.getLogger(__name__)

# "sp_" prefixed: the students' gateway strips it from every request it forwards to an instance
# (cookies are per host, not per port: on one host name the browser also sends it to the gateway)
SESSION_COOKIE = "sp_ops_session"
SESSION_SECONDS = 12 * 3600
SAMPLE_EVERY = 3.0  # seconds between two samples of the pools (admin status)
HISTORY = 3600.0  # seconds of samples kept for the plot
EVENTS_SHOWN = 30
LECTURE_EVERY = 60.0  # seconds the last lecture's report is kept before the event log is read again


@dataclass
class Dashboard:
    bus: Bus
    subjects: Subjects
    key: bytes  # signs sessions and CSRF tokens (a file in the state dir)
    catalogue_path: str | None  # what `reload` reads (the file `up` started with)
    gateway_url: str = ""  # the students' gateway, before a new lecture link's path ("": the path alone)
    login_tokens: set[str] = field(default_factory=set)  # one-time: consumed on first use
    pools: dict[str, AppStatus] = field(default_factory=dict)
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=int(HISTORY / SAMPLE_EVERY) + 1))
    claims: Counter[int] = field(default_factory=Counter)  # minute -> claims
    events: deque[str] = field(default_factory=lambda: deque(maxlen=EVENTS_SHOWN))
    error: str = ""
    lecture: tuple[float, str] = (float("-inf"), "")  # when the last lecture's section was made, and its HTML

    def new_login(self) -> str:
        token = secrets.token_urlsafe(24)
        self.login_tokens.add(token)
        return token

    def sign(self, text: str) -> str:
        return hmac.new(self.key, text.encode(), hashlib.sha256).hexdigest()

    def session(self, request: web.Request) -> str | None:
        """The session's nonce, when the cookie is ours, intact and unexpired."""
        value = request.cookies.get(SESSION_COOKIE, "")
        parts = value.split(".")
        if len(parts) != 3:
            return None
        expires, nonce, signature = parts
        if not hmac.compare_digest(self.sign(f"{expires}.{nonce}"), signature):
            return None
        if not expires.isdigit() or int(expires) < time.time():
            return None
        return nonce

    def csrf(self, nonce: str) -> str:
        return self.sign(f"csrf.{nonce}")[:32]

    def learn(self, event: InstanceEvent | AdminEvent) -> None:
        at = datetime.fromtimestamp(event.at, timezone.utc).strftime("%H:%M:%S")
        if isinstance(event, InstanceEvent):
            if event.event == "claimed":
                self.claims[int(event.at // 60)] += 1
            line = f"{at} {short_id(event.app, event.id)} {event.event}" + (f": {event.reason}" if event.reason else "")
        else:
            line = f"{at} admin {event.verb} by {event.by.user or '?'}@{event.by.host or '?'}: {event.reason}"
        self.events.appendleft(line)


DASHBOARD = web.AppKey("dashboard", Dashboard)


def load_key(state_dir: Path) -> bytes:
    """The signing key of sessions, made once per state dir (mode 0600): a restart keeps sessions."""
    path = state_dir / "dashboard.key"
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        write_private(path, secrets.token_hex(32))
    return bytes.fromhex(path.read_text().strip())


def make_dashboard(bus: Bus, subjects: Subjects, key: bytes, catalogue_path: str | None,
                   gateway_url: str = "") -> web.Application:
    app = web.Application(middlewares=[_headers])
    app[DASHBOARD] = Dashboard(bus=bus, subjects=subjects, key=key, catalogue_path=catalogue_path,
                               gateway_url=gateway_url.rstrip("/"))
    app.router.add_get("/login", login)
    app.router.add_get("/", page)
    app.router.add_get("/live", live)
    app.router.add_post("/act", act)
    app.cleanup_ctx.append(_sampling)
    return app


@web.middleware
async def _headers(request: web.Request, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    response.headers.update({
        "Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src "
                                   "'unsafe-inline'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'"})
    return response


async def _sampling(app: web.Application) -> AsyncIterator[None]:
    dash = app[DASHBOARD]
    stop = await follow_events(dash.bus, dash.subjects, dash.learn)

    async def sample() -> None:
        while True:
            await refresh(dash)
            await asyncio.sleep(SAMPLE_EVERY)

    task = asyncio.create_task(sample(), name="dashboard-samples")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await stop()


async def refresh(dash: Dashboard) -> None:
    """One sample of the pools from the admin service."""
    try:
        reply = await ask_admin(dash.bus, dash.subjects, "status", StatusRequest(), timeout=5)
    except BusError as err:
        dash.error = f"admin service not answering: {err}"
        return
    if isinstance(reply, AdminResult):
        dash.pools, dash.error = dict(reply.apps), ""
        dash.samples.append((time.time(), sum(a.ready for a in reply.apps.values())))


# ---- login ----


async def login(request: web.Request) -> web.Response:
    dash = request.app[DASHBOARD]
    token = request.query.get("token", "")
    if token not in dash.login_tokens:
        return web.Response(status=403, text="this login link is not valid (each one works once): "
                                             "use the line `swarmpool up` or `swarmpool dashboard` printed, or restart it for a new one")
    dash.login_tokens.discard(token)
    expires = int(time.time() + SESSION_SECONDS)
    nonce = secrets.token_urlsafe(16)
    response = web.HTTPSeeOther("/")
    response.set_cookie(SESSION_COOKIE, f"{expires}.{nonce}.{dash.sign(f'{expires}.{nonce}')}", path="/",
                        max_age=SESSION_SECONDS, httponly=True, samesite="Strict",
                        secure=request.secure)
    raise response


def _session_or_refuse(request: web.Request) -> str:
    nonce = request.app[DASHBOARD].session(request)
    if nonce is None:
        raise web.HTTPUnauthorized(text="log in with the one-time link that `swarmpool up` or `swarmpool dashboard` printed")
    return nonce


# ---- the page ----

STYLE = """
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}
.bar{display:flex;height:22px;width:480px;background:#eee;border-radius:3px;overflow:hidden}
.bar div{height:100%}.ready{background:#2a9d4b}.starting{background:#e9b020}.inuse{background:#3a6fd8}
.failed{background:#d33}.legend span{display:inline-block;width:10px;height:10px;margin:0 4px 0 10px}
table{border-collapse:collapse}td,th{padding:4px 10px;text-align:left;vertical-align:middle}
form{display:inline}input[type=number]{width:4em}#events{font:12px monospace;white-space:pre-wrap}
.err{color:#b00}
"""

SCRIPT = """
setInterval(async () => {
  const r = await fetch('/live', {credentials: 'same-origin'});
  if (r.ok) document.getElementById('live').innerHTML = await r.text();
}, 2000);
"""


def _bar(a: AppStatus) -> str:
    total = max(a.ready + a.starting + a.claimed + a.failed, a.target, 1)
    parts = "".join(f'<div class="{cls}" style="width:{100 * n / total:.1f}%" title="{label} {n}"></div>'
                    for cls, label, n in (("ready", "ready", a.ready), ("starting", "starting", a.starting),
                                          ("inuse", "in use", a.claimed), ("failed", "failed", a.failed)))
    return f'<div class="bar" data-app="{html.escape(a.app)}">{parts}</div>'


def _plot(dash: Dashboard, now: float) -> str:
    """Pool depth (ready, all apps) and claims per minute over the last hour, as inline SVG."""
    w, h = 480, 120
    depth = [(t, n) for t, n in dash.samples if now - t <= HISTORY]
    minute = int(now // 60)
    claims = [(m * 60.0, dash.claims.get(m, 0)) for m in range(minute - 59, minute + 1)]
    top = max([n for _, n in depth] + [n for _, n in claims] + [1])

    def line(points: list[tuple[float, int]]) -> str:
        return " ".join(f"{w * (1 - (now - t) / HISTORY):.1f},{h - h * n / top:.1f}" for t, n in points)

    return (f'<svg id="plot" width="{w}" height="{h + 20}" viewBox="0 0 {w} {h + 20}">'
            f'<rect width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>'
            f'<polyline fill="none" stroke="#2a9d4b" stroke-width="2" points="{line(depth)}"/>'
            f'<polyline fill="none" stroke="#3a6fd8" stroke-width="1.5" points="{line(claims)}"/>'
            f'<text x="2" y="{h + 15}" font-size="11">-60 min · green: ready (all apps) · blue: claims/min · '
            f'max {top}</text></svg>')


def _lecture_plot(points: list[Point], start: float, end: float) -> str:
    """The lecture as inline SVG: open sessions (blue), ready instances (green), waiting-room visits (orange bars)."""
    w, h = 480, 120
    top = max([p.sessions for p in points] + [p.ready for p in points] + [p.waiting for p in points] + [1])
    span = max(end - start, 1.0)

    def x(at: float) -> float:
        return w * (at - start) / span

    def line(values: list[tuple[float, int]]) -> str:
        return " ".join(f"{x(at):.1f},{h - h * n / top:.1f}" for at, n in values)
    bar = w / max(len(points), 1)
    bars = "".join(f'<rect x="{x(p.at) - bar / 2:.1f}" y="{h - h * p.waiting / top:.1f}" width="{bar * 0.8:.1f}" '
                   f'height="{h * p.waiting / top:.1f}" fill="#e9892a"/>' for p in points if p.waiting)
    return (f'<svg id="lecture-plot" width="{w}" height="{h + 20}" viewBox="0 0 {w} {h + 20}">'
            f'<rect width="{w}" height="{h}" fill="#fafafa" stroke="#ccc"/>{bars}'
            f'<polyline fill="none" stroke="#3a6fd8" stroke-width="2" '
            f'points="{line([(p.at, p.sessions) for p in points])}"/>'
            f'<polyline fill="none" stroke="#2a9d4b" stroke-width="1.5" '
            f'points="{line([(p.at, p.ready) for p in points])}"/>'
            f'<text x="2" y="{h + 15}" font-size="11">blue: sessions · green: ready · orange: waiting-room visits · '
            f'max {top}</text></svg>')


def _spread(s: Spread | None) -> str:
    return "-" if s is None else f"{s.p50:.1f} / {s.p95:.1f} / {s.max:.1f} s"


def lecture_html(found: tuple[Report, list[Point]] | None) -> str:
    """The last lecture's report (as `swarmpool report --lecture`) and its plot."""
    if found is None:
        return "<h2>Last lecture</h2><p>No lecture yet: a schedule entry or a labelled lecture link names one.</p>"
    rep, points = found
    when = (f"{datetime.fromtimestamp(rep.start, timezone.utc):%Y-%m-%d %H:%M} to "
            f"{datetime.fromtimestamp(rep.end, timezone.utc):%H:%M} UTC")
    head = ("<tr><th>app</th><th>students served</th><th>click to page p50 / p95 / max</th>"
            "<th>waiting room</th><th>session length p50 / p95 / max</th><th>peak</th><th>failures</th>"
            "<th>no ready instance</th><th>instance-hours</th></tr>")
    rows = "".join(
        f'<tr class="lecture" data-app="{html.escape(r.app)}" data-served="{r.served}">'
        f"<th>{html.escape(r.app)}</th><td>{r.served}</td><td>{_spread(r.click_to_page)}</td>"
        f"<td>{r.waiting_visits} visits, longest {'-' if r.longest_wait is None else f'{r.longest_wait:.1f} s'}</td>"
        f"<td>{_spread(r.session_length)}</td><td>{r.peak_concurrency}</td>"
        f"<td>{html.escape(', '.join(f'{k} {v}' for k, v in r.failures.items()) or 'none')}</td>"
        f"<td>{r.minutes_without_ready:g} min</td>"
        f"<td>{r.instance_hours:g}{'' if r.cost is None else f' (cost {r.cost:.2f})'}</td></tr>"
        for r in rep.apps.values())
    return (f"<h2>Last lecture: {html.escape(rep.lecture)}</h2><p>{when}</p><table>{head}{rows}</table>"
            f"{_lecture_plot(points, rep.start, min(rep.end, time.time()))}")


async def lecture_section(dash: Dashboard) -> str:
    """The last lecture's section, read from the event log at most every LECTURE_EVERY seconds."""
    made, text = dash.lecture
    if time.monotonic() - made < LECTURE_EVERY:
        return text
    try:
        text = lecture_html(await last_lecture_report(dash.bus.client.jetstream(), dash.subjects, time.time()))
    except Exception as err:  # the event log unreadable now: the rest of the page still works
        log.warning("last lecture's report not made: %s", err)
        return f'<h2>Last lecture</h2><p class="err">the event log cannot be read now: {html.escape(str(err))}</p>'
    dash.lecture = (time.monotonic(), text)
    return text


def live_html(dash: Dashboard) -> str:
    rows = "".join(
        f'<tr class="pool" data-app="{html.escape(a.app)}" data-ready="{a.ready}" data-paused="{str(a.paused).lower()}">'
        f"<th>{html.escape(a.app)}</th><td>{_bar(a)}</td>"
        f"<td>{a.ready} ready · {a.starting} starting · {a.claimed} in use · {a.failed} failed · "
        f"{a.queued} waiting in line · target {a.target} "
        f"({html.escape(a.target_source)})</td></tr>" for a in dash.pools.values())
    events = "\n".join(html.escape(e) for e in dash.events) or "(no events since the dashboard started)"
    error = f'<p class="err">{html.escape(dash.error)}</p>' if dash.error else ""
    return (f"{error}<table>{rows}</table>{_plot(dash, time.time())}"
            f"<h2>Latest events</h2><div id=\"events\">{events}</div>")


def _controls(dash: Dashboard, csrf: str) -> str:
    """The buttons of the verbs the table offers on the dashboard (bus/verbs.py), with the inputs it names."""
    def form(verb: Verb, app: str, label: str) -> str:
        inputs = "".join(f'<input name="{arg.field}" {arg.form_input}>' for arg in verb.args if arg.form_input)
        return (f'<form method="post" action="/act"><input type="hidden" name="csrf" value="{csrf}">'
                f'<input type="hidden" name="verb" value="{verb.name}"><input type="hidden" name="app" '
                f'value="{html.escape(app)}">{inputs}<button name="do" value="{verb.name}" data-app="{html.escape(app)}">'
                f"{label}</button></form>")

    per_app = [v for v in VERBS.values() if v.dashboard == "per_app"]
    rows = "".join(f"<tr><th>{html.escape(a)}</th><td>" + "".join(form(v, a, v.name) for v in per_app) + "</td></tr>"
                   for a in dash.pools)
    page = "".join(form(v, "", f"{v.name} {html.escape(dash.catalogue_path)}")
                   for v in VERBS.values() if v.dashboard == "page" and dash.catalogue_path)
    return f"<h2>Actions</h2><table>{rows}</table><p>{page}</p>"


async def page(request: web.Request) -> web.Response:
    nonce = _session_or_refuse(request)
    dash = request.app[DASHBOARD]
    await refresh(dash)
    legend = ('<p class="legend"><span class="ready"></span>ready<span class="starting"></span>starting'
              '<span class="inuse"></span>in use<span class="failed"></span>failed</p>')
    note = request.query.get("done", "")
    body = (f"<!doctype html><html><head><meta charset=utf-8><title>swarmpool dashboard</title>"
            f"<style>{STYLE}</style></head><body><h1>swarmpool · {html.escape(dash.subjects.prefix)}</h1>"
            + (f'<p id="done">{html.escape(note)}</p>' if note else "")
            + f'{legend}<div id="live">{live_html(dash)}</div>{await lecture_section(dash)}'
            f'{_controls(dash, dash.csrf(nonce))}'
            f"<script>{SCRIPT}</script></body></html>")
    return web.Response(text=body, content_type="text/html")


async def live(request: web.Request) -> web.Response:
    _session_or_refuse(request)
    return web.Response(text=live_html(request.app[DASHBOARD]), content_type="text/html")


# ---- actions ----


async def act(request: web.Request) -> web.Response:
    nonce = _session_or_refuse(request)
    dash = request.app[DASHBOARD]
    form = await request.post()
    if not hmac.compare_digest(str(form.get("csrf", "")), dash.csrf(nonce)):
        raise web.HTTPForbidden(text="stale or missing form token: reload the page")
    name = str(form.get("verb", ""))
    verb = VERBS.get(name)
    if verb is None or verb.dashboard == "none" or (verb.dashboard == "page" and not dash.catalogue_path):
        raise web.HTTPBadRequest(text=f"unknown action {name!r}")
    if verb.dashboard == "page":  # reload: the file the dashboard was started with, never one the form names
        values: dict[str, Any] = {"text": dash.catalogue_path}
    else:
        values = {"app": str(form.get("app", ""))}
        values |= {arg.field: str(form.get(arg.field, "")) for arg in verb.args if arg.form_input}
    try:
        request_struct = msgspec.structs.replace(request_from(verb, values),
                                                 by=Requester(user="dashboard", host=socket.gethostname()))
    except CatalogueError as err:
        raise web.HTTPBadRequest(text=f"bad catalogue: {err}") from None
    except (ValueError, OSError) as err:
        raise web.HTTPBadRequest(text=f"{err}") from None
    try:
        reply = await ask_admin(dash.bus, dash.subjects, verb.name, request_struct)
    except BusError as err:
        raise web.HTTPServiceUnavailable(text=f"admin service not answering: {err}") from None
    if isinstance(reply, ErrorReply):
        raise web.HTTPBadRequest(text=f"{verb.name}: {reply.error}: {reply.detail}")
    if reply.link is not None and reply.link.path:  # a new lecture link: shown once, here (never in a URL)
        url = dash.gateway_url + reply.link.path
        return web.Response(content_type="text/html", text=(
            f"<!doctype html><html><head><meta charset=utf-8><title>lecture link</title><style>{STYLE}</style>"
            f"</head><body><h1>Lecture link</h1><p>{html.escape(reply.detail)}</p>"
            f'<p><input id="link" readonly size="100" value="{html.escape(url)}"></p>'
            + ("" if dash.gateway_url else "<p>Put your gateway's address (https://…) before it.</p>")
            + '<p><a href="/">back</a></p></body></html>'))
    await refresh(dash)
    raise web.HTTPSeeOther(f"/?{urlencode({'done': reply.detail})}")


def urlencode(query: dict[str, str]) -> str:
    from urllib.parse import urlencode as encode

    return encode(query)
