"""The catalogue page and `/launch/<app>`: a click becomes a claim request on the bus."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import re
import secrets
import time
import urllib.parse
from functools import partial

import msgspec
from aiohttp import web

from swarmpool.bus.client import BusError, NoResponders, RequestTimeout
from swarmpool.bus.links import Verified, short_link
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest, ErrorReply, Queued, Released, ReleaseRequest
from swarmpool.bus.spec import AppSpec
from swarmpool.gateway import pages
from swarmpool.gateway.context import BROWSER_COOKIE, GATEWAY, HTTPS_BROWSER_COOKIE, Gateway, wants_json
from swarmpool.gateway.framing import embeddable, third_party_cookie
from swarmpool.gateway.metrics import UNKNOWN_APP
from swarmpool.gateway.intent import launch_verdict
from swarmpool.gateway.origin import launch_location, public_scheme
from swarmpool.gateway.queue import (KEEPALIVE, browser_of, event, place_text, refresh_seconds, ticket_path,
                                     valid_ticket)
from swarmpool.ids import short_id, valid_id

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 3
CLAIM_GRACE = 2.0  # beyond the claimer's own wait, for the round trip
BROWSER_COOKIE_AGE = 180 * 86400
_BROWSER_VALUE = re.compile(r"[A-Za-z0-9_-]{22}")  # secrets.token_urlsafe(16)
# Link previews, mail scanners' known agents and crawlers: they get the app's description, never a claim.
PREVIEW_AGENTS = re.compile(
    r"slackbot|slack-imgproxy|skypeuripreview|microsoftpreview|discordbot|facebookexternalhit|facebot"
    r"|twitterbot|linkedinbot|whatsapp/|telegrambot|googlebot|google-inspectiontool|adsbot-google|bingbot"
    r"|bingpreview|duckduckbot|yandexbot|baiduspider|applebot|yahoo! slurp|mattermost-bot|redditbot"
    r"|embedly|iframely|pinterestbot|vkshare|\bcrawler\b|\bspider\b",
    re.IGNORECASE,
)
MAX_FORM = 4096  # bytes of the end-sessions form (a token: a few dozen)
RELEASE_WAIT = 5.0  # seconds a release (ending a browser's sessions) may take on the bus
_TOKEN_CONTEXT = b"swarmpool end-sessions token\x00"
LINK_PARAM = "l"  # the query parameter of a lecture link's token (bus/links.py)
MAX_LINK_TOKEN = 128
ROBOTS_TXT = "User-agent: *\nDisallow: /launch/\nDisallow: /i/\n"


async def index(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    listed = [a for a in gw.catalogue.apps.values() if not a.require_link]  # those open with a lecture link only
    return web.Response(text=pages.catalogue_page(listed), content_type="text/html",
                        headers={"Cache-Control": "no-cache"})


async def launch(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    name = request.match_info["app"]
    spec = gw.catalogue.apps.get(name)
    if spec is None:
        gw.metrics.launches.labels(UNKNOWN_APP, "unknown").inc()
        if wants_json(request):
            return web.json_response({"status": "unknown_app"}, status=404)
        return web.Response(text=pages.unknown_app_page(), content_type="text/html", status=404)

    link = request.query.get(LINK_PARAM, "") if spec.require_link else ""
    if is_preview_agent(request.headers.get("User-Agent", "")):
        gw.metrics.launches.labels(spec.name, "preview").inc()
        return web.Response(text=pages.description_page(spec, link), content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})

    link_id = ""
    if spec.require_link:  # a lecture link: checked here (signature, expiry), counted by the claimer
        verified = await _verify_link(gw, spec, link)
        if verified.check != "ok":
            gw.metrics.launches.labels(spec.name, f"link_{verified.check}").inc()
            log.info("launch %s: link %s %s", spec.name, short_link(verified.link_id) or "-", verified.check)
            gw.visits.click(spec.name, "refused", cause=f"link_{verified.check}", link=short_link(verified.link_id))
            return _link_refused(request, spec, verified.check)
        link_id = verified.link_id

    verdict = launch_verdict(request.headers, spec.frame_ancestors)
    if verdict != "claim":  # fetch(), <img>, a frame not allowed, prefetch or prerender: never a session
        gw.metrics.launches.labels(spec.name, verdict).inc()
        if verdict == "frame":  # a course page not allowed to frame the app (prefetches are no student's click)
            gw.visits.click(spec.name, "refused", cause="frame", link=short_link(link_id))
        return _not_a_click(request, spec, verdict, link)

    # the queue binds a ticket to the browser cookie, so with it the cookie is kept even without a limit
    keyed = gw.catalogue.settings.per_browser_limit or gw.queue is not None
    browser, new_cookie = browser_key(request) if keyed else ("", None)
    response = await _answer(request, gw, spec, browser, link, link_id)
    if new_cookie is not None:
        if _https(request) and embeddable(spec.frame_ancestors):
            # inside an allowed course page's frame too (a Lax cookie is neither kept nor sent there);
            # Python's cookie module knows no Partitioned attribute: the header is written here
            response.headers.add("Set-Cookie", third_party_cookie(
                f"{HTTPS_BROWSER_COOKIE}={new_cookie}; Path=/; Max-Age={BROWSER_COOKIE_AGE}; HttpOnly"))
        elif _https(request):  # __Host-: Secure, Path=/ and no Domain are what the prefix requires
            response.set_cookie(HTTPS_BROWSER_COOKIE, new_cookie, path="/", max_age=BROWSER_COOKIE_AGE,
                                httponly=True, samesite="Lax", secure=True)
        else:
            response.set_cookie(BROWSER_COOKIE, new_cookie, path="/launch/", max_age=BROWSER_COOKIE_AGE,
                                httponly=True, samesite="Lax")
    return response


async def _verify_link(gw: Gateway, spec: AppSpec, token: str) -> Verified:
    """The lecture link's token checked against the signing keys on the bus (no keys: nothing verifies)."""
    if len(token) > MAX_LINK_TOKEN:
        return Verified("tampered")
    if gw.link_keys is None:
        return Verified("missing") if not token else Verified("tampered")
    return await gw.link_keys.verify(token, spec.name, time.time())


def _link_refused(request: web.Request, spec: AppSpec, why: str) -> web.Response:
    """A launch its lecture link does not allow: 403 (missing, altered, withdrawn) or 410 (expired, used up)."""
    status = pages.LINK_REFUSALS[why][0]
    headers = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
    reason = why.removeprefix("link_")
    if wants_json(request):
        return web.json_response({"status": "link", "app": spec.name, "reason": reason}, status=status,
                                 headers=headers)
    return web.Response(text=pages.link_refused_page(spec, why), content_type="text/html", status=status,
                        headers=headers)


def _not_a_click(request: web.Request, spec: AppSpec, verdict: str, link: str = "") -> web.Response:
    """The answer to a request that is no tab's navigation: 403, never cached, nothing claimed (a
    prefetch or prerender that got a 2xx would be shown instead of the real click's claim)."""
    headers = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
    if wants_json(request) or verdict == "not_navigation":
        return web.json_response({"status": "not_a_click", "app": spec.name, "reason": verdict},
                                 status=403, headers=headers)
    return web.Response(text=pages.open_in_tab_page(spec, link), content_type="text/html", status=403,
                        headers=headers)


async def _answer(request: web.Request, gw: Gateway, spec: AppSpec, browser: str, link: str = "",
                  link_id: str = "") -> web.Response:
    """The click's answer: 303 to a fresh session, the browser's sessions at its limit, or the waiting
    room (whose retry keeps the lecture link `link`)."""
    wait = float(gw.catalogue.settings.claim_wait)
    started = time.monotonic()
    # API clients (JSON) keep the waiting room that they retry themselves: a place in line needs its page
    queue = gw.queue is not None and bool(browser) and not wants_json(request)
    reply = await _claim(gw, spec.name, wait, browser, link_id, queue=queue)
    gw.metrics.claim_latency.labels(spec.name).observe(time.monotonic() - started)

    visit = partial(gw.visits.click, spec.name, browser=browser, link=short_link(link_id))
    if isinstance(reply, Claimed):
        return _served(request, gw, spec, reply, visit)
    if isinstance(reply, Queued):  # no instance now: a place in line, on its own page (bound to this browser)
        visit("waiting", cause="queued")
        gw.metrics.launches.labels(spec.name, "queued").inc()
        return web.Response(status=303, headers={"Location": ticket_path(spec.name, reply.ticket),
                                                 "Cache-Control": "no-store"})
    if isinstance(reply, ClaimRefused) and reply.reason == "full":
        gw.metrics.launches.labels(spec.name, "full").inc()
        visit("refused", cause="full")
        return _full(request, spec, reply)

    if isinstance(reply, ClaimRefused) and reply.reason == "limit":
        gw.metrics.launches.labels(spec.name, "limit").inc()
        visit("refused", cause="limit")
        return _limit(request, gw, spec, reply, link)

    if isinstance(reply, ClaimRefused) and reply.reason in pages.LINK_REFUSALS:  # the claimer's count said no
        gw.metrics.launches.labels(spec.name, reply.reason).inc()
        visit("refused", cause=reply.reason)
        log.info("launch %s: link %s %s", spec.name, short_link(link_id), reply.reason)
        return _link_refused(request, spec, reply.reason)
    if isinstance(reply, ClaimRefused) and reply.reason == "link_missing":  # a gateway without the app's setting
        gw.metrics.launches.labels(spec.name, "link_missing").inc()
        visit("refused", cause="link_missing")
        return _link_refused(request, spec, "missing")

    paused = isinstance(reply, ClaimRefused) and reply.reason == "paused"
    retry = DEFAULT_RETRY_AFTER
    if isinstance(reply, ClaimRefused) and reply.retry_after > 0:
        retry = max(1, math.ceil(reply.retry_after))
    gw.metrics.launches.labels(spec.name, "waiting").inc()
    visit("waiting", cause=reply.reason if isinstance(reply, ClaimRefused)
          else "error" if isinstance(reply, ErrorReply) else "unavailable")
    headers = {"Retry-After": str(retry), "Cache-Control": "no-store"}
    if wants_json(request):
        return web.json_response({"status": "paused" if paused else "waiting", "app": spec.name,
                                  "retry_after": retry}, status=503, headers=headers)
    return web.Response(text=pages.waiting_page(spec, retry, paused=paused, link=link), content_type="text/html",
                        status=503, headers=headers)


def _served(request: web.Request, gw: Gateway, spec: AppSpec, reply: Claimed,
            visit: partial[None]) -> web.Response:
    """303 to the fresh session (its route known here at once)."""
    visit("served", instance_id=reply.id)
    gw.routes.add_claimed(reply.id, spec.name, reply.endpoint)
    gw.metrics.launches.labels(spec.name, "claimed").inc()
    log.debug("launch %s: claimed %s", spec.name, short_id(spec.name, reply.id))  # the claimer logs it at INFO
    settings = gw.catalogue.settings
    location = launch_location(request, settings.instance_domain, reply.id, reply.deep_link,
                               settings.trusted_proxies)
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _full(request: web.Request, spec: AppSpec, reply: ClaimRefused) -> web.Response:
    """The app's queue holds pool.queue_max students: 503, try again later."""
    retry = max(1, math.ceil(reply.retry_after))
    headers = {"Retry-After": str(retry), "Cache-Control": "no-store"}
    if wants_json(request):
        return web.json_response({"status": "full", "app": spec.name, "retry_after": retry}, status=503,
                                 headers=headers)
    return web.Response(text=pages.full_page(spec, retry), content_type="text/html", status=503, headers=headers)


def _ticket_gone(request: web.Request, spec: AppSpec) -> web.Response:
    """A ticket that lapsed, was served, or is another browser's: 404, and a link to start again."""
    headers = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
    if wants_json(request):
        return web.json_response({"status": "no_ticket", "app": spec.name}, status=404, headers=headers)
    return web.Response(text=pages.ticket_gone_page(spec), content_type="text/html", status=404, headers=headers)


def _browser_of_request(request: web.Request) -> str:
    cookie, twice = browser_cookie(request)
    return browser_of(cookie) if cookie and not twice and _BROWSER_VALUE.fullmatch(cookie) else ""


async def ticket(request: web.Request) -> web.StreamResponse:
    """GET /launch/<app>/ticket/<ticket>: the waiting student's place, or on their turn 303 to their session."""
    gw = request.app[GATEWAY]
    spec = gw.catalogue.apps.get(request.match_info["app"])
    ticket_id = request.match_info["ticket"]
    if spec is None or gw.queue is None or not valid_ticket(ticket_id):
        return web.Response(text=pages.unknown_app_page(), content_type="text/html", status=404,
                            headers={"Cache-Control": "no-store"})
    verdict = launch_verdict(request.headers, spec.frame_ancestors)
    if verdict == "frame" and spec.frame_ancestors and "'none'" not in spec.frame_ancestors:
        # the launch's 303 inside an allowed course page's frame arrives cross-site without a Referer; the ticket
        # came from a launch whose frame passed, and the page's frame-ancestors keep it out of any other parent
        verdict = "claim"
    if verdict != "claim":  # a prefetch or a script's fetch never takes the turn (nor learns where it leads)
        gw.metrics.launches.labels(spec.name, verdict).inc()
        return _not_a_click(request, spec, verdict)
    browser = _browser_of_request(request)
    placed = await gw.queue.find(spec.name, ticket_id, browser)
    if placed is None:
        return _ticket_gone(request, spec)
    await gw.queue.shown(spec.name, ticket_id)
    if placed.ticket.state == "turn":
        reply = await _claim(gw, spec.name, float(gw.catalogue.settings.claim_wait), browser, ticket=ticket_id)
        visit = partial(gw.visits.click, spec.name, browser=browser, link=short_link(placed.ticket.link))
        if isinstance(reply, Claimed):
            return _served(request, gw, spec, reply, visit)
        if isinstance(reply, ClaimRefused) and reply.reason == "limit":
            gw.metrics.launches.labels(spec.name, "limit").inc()
            visit("refused", cause="limit")
            return _limit(request, gw, spec, reply)
        if isinstance(reply, ClaimRefused) and reply.reason in pages.LINK_REFUSALS:
            gw.metrics.launches.labels(spec.name, reply.reason).inc()
            visit("refused", cause=reply.reason)
            return _link_refused(request, spec, reply.reason)
        if isinstance(reply, ClaimRefused) and reply.reason == "ticket":
            return _ticket_gone(request, spec)
    where = gw.queue.where(spec.name, ticket_id)
    refresh = refresh_seconds(float(gw.catalogue.settings.queue_window))
    headers = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex"}
    if wants_json(request):
        return web.json_response({"status": "queued", "app": spec.name, **where, "refresh": refresh},
                                 headers=headers)
    return web.Response(text=pages.queue_page(spec, place_text(where), refresh), content_type="text/html",
                        headers=headers)


async def ticket_wait(request: web.Request) -> web.StreamResponse:
    """GET /launch/<app>/ticket/<ticket>/wait: the held connection (server-sent events) that keeps the place
    while the page is open: the place as it moves, then "turn" (never where the session is)."""
    gw = request.app[GATEWAY]
    spec = gw.catalogue.apps.get(request.match_info["app"])
    ticket_id = request.match_info["ticket"]
    if spec is None or gw.queue is None or not valid_ticket(ticket_id):
        return web.json_response({"status": "no_ticket"}, status=404, headers={"Cache-Control": "no-store"})
    queue = gw.queue
    if await queue.find(spec.name, ticket_id, _browser_of_request(request)) is None:
        return web.json_response({"status": "no_ticket"}, status=404, headers={"Cache-Control": "no-store"})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                           "X-Accel-Buffering": "no"})
    await response.prepare(request)
    release = queue.hold(spec.name, ticket_id)
    try:
        last: dict[str, object] | None = None
        while request.transport is not None and not request.transport.is_closing():
            placed = queue.tickets.get(spec.name, ticket_id)
            if placed is None or placed.ticket.state == "turn":
                await response.write(event("gone" if placed is None else "turn"))
                break
            where = queue.where(spec.name, ticket_id)
            if where != last:
                await response.write(event("position", {**where, "text": place_text(where)}))
                last = where
            else:
                await response.write(b": held\n\n")
            await queue.tickets.wait_changed(KEEPALIVE)
    except (ConnectionResetError, ConnectionError):
        pass  # the tab went: the place lapses once the queue window passes without it
    finally:
        release()
    return response


def is_preview_agent(user_agent: str) -> bool:
    """A link preview, crawler or scanner that announces itself: it must never take a session."""
    return PREVIEW_AGENTS.search(user_agent) is not None


def _limit(request: web.Request, gw: Gateway, spec: AppSpec, reply: ClaimRefused, link: str = "") -> web.Response:
    """The browser holds its limit of sessions: they are named, never linked, with a form that ends
    them. On one shared origin any script there can read this answer; with per-instance origins
    (instance_domain) an instance's page can plant the browser cookie of a key it knows from its own
    host (Domain=<parent>, over plain HTTP), and would then read the victim's links: so never links."""
    settings = gw.catalogue.settings
    limit = settings.per_browser_limit
    # same-origin, not no-referrer: the page holds no capability, and under no-referrer Chromium sends
    # its form's POST with `Origin: null`; to other sites it still tells nothing
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "same-origin"}
    started = []
    for instance_id in (i for i in reply.sessions if valid_id(i)):
        record = gw.store.get(spec.name, instance_id)
        started.append(record.instance.claimed_at if record is not None else None)
    cookie, _ = browser_cookie(request)
    token = end_token(cookie) if cookie else ""
    if wants_json(request):
        sessions = [{"started": at} for at in started]
        return web.json_response({"status": "limit", "app": spec.name, "limit": limit, "sessions": sessions,
                                  "end": {"method": "POST", "url": pages.launch_href(spec, link), "token": token}},
                                 status=429, headers=headers)
    return web.Response(text=pages.limit_page_unlinked(spec, limit, started, token, time.time(), link),
                        content_type="text/html", status=429, headers=headers)


def browser_cookie(request: web.Request) -> tuple[str | None, bool]:
    """The gateway's browser cookie as sent, and whether it was sent more than once.

    Over HTTPS only `__Host-sp_browser` is read (an `sp_browser` may have been planted from another
    host). Over HTTP a page on the shared origin can set a second `sp_browser` (path=/) beside the
    gateway's own: then neither is believed (no "last one wins")."""
    wanted = HTTPS_BROWSER_COOKIE if _https(request) else BROWSER_COOKIE
    values: list[str] = []
    for header in request.headers.getall("Cookie", []):
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name.strip() == wanted:
                values.append(value.strip())
    if len(values) > 1:
        return None, True
    return (values[0] if values else None), False


def browser_key(request: web.Request) -> tuple[str, str | None]:
    """The browser's opaque key for the bus (a hash: the cookie itself never leaves the gateway),
    and a new cookie value to set when it came without a valid one. A cookie sent twice counts as
    none: no key (not limited, as a cookie-less client) and no new cookie."""
    value, twice = browser_cookie(request)
    if twice:
        return "", None
    new = None
    if value is None or not _BROWSER_VALUE.fullmatch(value):
        value = new = secrets.token_urlsafe(16)
    return hashlib.sha256(value.encode()).hexdigest()[:32], new


def end_token(cookie: str) -> str:
    """The limit page's form token: derived from the browser's cookie (HttpOnly, 128 random bits),
    so a page on another site, which cannot read it, cannot make the browser end its sessions."""
    return hashlib.sha256(_TOKEN_CONTEXT + cookie.encode()).hexdigest()[:32]


def _from_own_page(request: web.Request, proxies: tuple[str, ...]) -> bool:
    """The browser says the request is a student's press of a form's button on this origin, or says nothing.

    With Fetch Metadata (HTTPS, localhost), the POST must be a same-origin top-level navigation
    with a user gesture (`Sec-Fetch-User: ?1`): a script that opened the limit page in a window
    and read its token cannot submit the form for the student (a script's submit() has no ?1,
    fetch() is no navigation). Chromium sends `Origin: null` from a page under a no-referrer policy;
    then Sec-Fetch-Site (which no page can set) must vouch for it."""
    site = request.headers.get("Sec-Fetch-Site", "").strip().lower()
    metadata = [request.headers.get(f"Sec-Fetch-{name}", "").strip().lower() for name in ("Mode", "Dest", "User")]
    if site or any(metadata):
        if site != "same-origin" or metadata != ["navigate", "document", "?1"]:
            return False
    origin = request.headers.get("Origin", "").strip().lower()
    if not origin:
        return True
    if origin == "null":
        return site == "same-origin"
    scheme, _, authority = origin.partition("://")
    host = request.host.strip().lower()
    if scheme != public_scheme(request, proxies):
        return False
    # nginx forwards `$host`, which has no port: then the host name alone must match
    return authority == host if ":" in host.rsplit("]", 1)[-1] else authority.rsplit(":", 1)[0] == host


async def end_sessions(request: web.Request) -> web.StreamResponse:
    """POST /launch/<app> from the limit page: end this browser's sessions of the app, then a fresh click."""
    gw = request.app[GATEWAY]
    name = request.match_info["app"]
    spec = gw.catalogue.apps.get(name)
    if spec is None:
        return web.json_response({"status": "unknown_app"}, status=404)
    headers = {"Cache-Control": "no-store"}
    cookie, twice = browser_cookie(request)
    if twice or cookie is None or not _BROWSER_VALUE.fullmatch(cookie):
        return web.json_response({"status": "refused", "reason": "cookie"}, status=400, headers=headers)
    if not _from_own_page(request, gw.catalogue.settings.trusted_proxies):
        return web.json_response({"status": "refused", "reason": "origin"}, status=403, headers=headers)
    form = await _end_form(request)
    if isinstance(form, int):
        return web.json_response({"status": "refused", "reason": "body"}, status=form, headers=headers)
    token = form.get("token", [""])[0]
    if not hmac.compare_digest(token.encode(), end_token(cookie).encode()):
        return web.json_response({"status": "refused", "reason": "token"}, status=403, headers=headers)
    browser = hashlib.sha256(cookie.encode()).hexdigest()[:32]
    ended = await _release(gw, spec.name, browser)
    if ended is None:
        return web.json_response({"status": "unavailable"}, status=503, headers={**headers, "Retry-After": "3"})
    gw.metrics.launches.labels(spec.name, "released").inc()
    if wants_json(request):
        return web.json_response({"status": "ended", "app": spec.name, "ended": ended}, headers=headers)
    # a fresh click, with the lecture link the limit page's form carried (checked again there)
    link = request.query.get(LINK_PARAM, "")[:MAX_LINK_TOKEN] if spec.require_link else ""
    raise web.HTTPSeeOther(pages.launch_href(spec, link), headers=headers)


async def _end_form(request: web.Request) -> dict[str, list[str]] | int:
    """The end-sessions form's fields, or the 4xx status of a body that is not one: only
    urlencoded, at most MAX_FORM bytes (chunked too) read within body_timeout, UTF-8, a few fields
    (its charset parameter, which browsers do not send, is ignored: the token is ASCII)."""
    if request.content_type.lower() != "application/x-www-form-urlencoded":
        return 400
    if request.content_length is not None and request.content_length > MAX_FORM:
        return 413
    body = bytearray()
    try:
        async with asyncio.timeout(float(request.app[GATEWAY].catalogue.settings.body_timeout)):
            while len(body) <= MAX_FORM:
                chunk = await request.content.read(MAX_FORM + 1 - len(body))
                if not chunk:
                    break
                body += chunk
    except TimeoutError:
        return 408  # a body that trickles: the handler is not held longer than any upload's
    if len(body) > MAX_FORM:
        return 413
    try:
        return urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=4)
    except (UnicodeDecodeError, ValueError):
        return 400


async def _release(gw: Gateway, app: str, browser: str) -> int | None:
    """Ask the claimers to end the browser's sessions of `app`; how many began to end, None if nobody answered."""
    try:
        data = await gw.bus.request(gw.subjects.release(app), ReleaseRequest(app=app, browser=browser),
                                    timeout=RELEASE_WAIT)
        reply = gw.release_decoder.decode(data)
    except BusError as err:
        log.warning("release %s failed: %s", app, err)
        return None
    except msgspec.DecodeError as err:
        log.error("release %s: malformed reply: %s", app, err)
        return None
    if isinstance(reply, ErrorReply):
        log.error("release %s: claimer error %s (%s)", app, reply.error, reply.detail)
        return None
    return reply.ended


def _https(request: web.Request) -> bool:
    return public_scheme(request, request.app[GATEWAY].catalogue.settings.trusted_proxies) == "https"


async def robots(request: web.Request) -> web.Response:
    return web.Response(text=ROBOTS_TXT, content_type="text/plain", headers={"Cache-Control": "max-age=3600"})


async def _claim(gw: Gateway, app: str, wait: float, browser: str = "", link: str = "", *, queue: bool = False,
                 ticket: str = "") -> Claimed | ClaimRefused | Queued | ErrorReply | None:
    """Ask the claimers for one instance (counted on the verified lecture link `link`, an id), or a place in
    the queue (`queue`), or the instance held for `ticket`; None when nobody answered in time."""
    request = ClaimRequest(app=app, wait=wait, browser=browser, link=link, queue=queue or bool(ticket),
                           ticket=ticket)
    try:
        data = await gw.bus.request(gw.subjects.claim(app), request, timeout=wait + CLAIM_GRACE)
    except NoResponders:
        log.warning("launch %s: no claimer is running", app)
        return None
    except RequestTimeout:
        log.warning("launch %s: claim timed out after %.1f s", app, wait + CLAIM_GRACE)
        return None
    except BusError as err:
        log.warning("launch %s: claim failed: %s", app, err)
        return None
    try:
        reply = gw.claim_decoder.decode(data)
    except msgspec.DecodeError as err:
        log.error("launch %s: malformed claim reply: %s", app, err)
        return None
    if isinstance(reply, ErrorReply):
        log.error("launch %s: claimer error %s (%s)", app, reply.error, reply.detail)
    elif isinstance(reply, Claimed) and (not valid_id(reply.id) or reply.app != app or not reply.endpoint):
        log.error("launch %s: claim reply for a bad instance %s", app, short_id(reply.app, reply.id))
        return None
    return reply
