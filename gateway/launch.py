"""The catalogue page and `/launch/<app>`: a click becomes a claim request on the bus."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import time

import msgspec
from aiohttp import web

from swarmpool.bus.client import BusError, NoResponders, RequestTimeout
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest, ErrorReply
from swarmpool.bus.spec import AppSpec
from swarmpool.gateway import pages
from swarmpool.gateway.context import BROWSER_COOKIE, GATEWAY, Gateway, wants_json
from swarmpool.gateway.metrics import UNKNOWN_APP
from swarmpool.gateway.origin import launch_location
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
ROBOTS_TXT = "User-agent: *\nDisallow: /launch/\nDisallow: /i/\n"


async def index(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    return web.Response(text=pages.catalogue_page(list(gw.catalogue.apps.values())), content_type="text/html",
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

    if is_preview_agent(request.headers.get("User-Agent", "")):
        gw.metrics.launches.labels(spec.name, "preview").inc()
        return web.Response(text=pages.description_page(spec), content_type="text/html",
                            headers={"Cache-Control": "no-store", "X-Robots-Tag": "noindex"})

    browser, new_cookie = browser_key(request) if gw.catalogue.settings.per_browser_limit else ("", None)
    response = await _answer(request, gw, spec, browser)
    if new_cookie is not None:
        response.set_cookie(BROWSER_COOKIE, new_cookie, path="/launch/", max_age=BROWSER_COOKIE_AGE,
                            httponly=True, samesite="Lax", secure=_https(request))
    return response


async def _answer(request: web.Request, gw: Gateway, spec: AppSpec, browser: str) -> web.Response:
    """The click's answer: 303 to a fresh session, the browser's sessions at its limit, or the waiting room."""
    wait = float(gw.catalogue.settings.claim_wait)
    started = time.monotonic()
    reply = await _claim(gw, spec.name, wait, browser)
    gw.metrics.claim_latency.labels(spec.name).observe(time.monotonic() - started)

    if isinstance(reply, Claimed):
        gw.routes.add_claimed(reply.id, spec.name, reply.endpoint)
        gw.metrics.launches.labels(spec.name, "claimed").inc()
        log.info("launch %s: claimed %s", spec.name, short_id(spec.name, reply.id))
        location = launch_location(request, gw.catalogue.settings.instance_domain, reply.id, reply.deep_link)
        return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})

    if isinstance(reply, ClaimRefused) and reply.reason == "limit":
        gw.metrics.launches.labels(spec.name, "limit").inc()
        # the browser's own capabilities, sent only to it: never cached, never in a Referer
        domain = gw.catalogue.settings.instance_domain
        sessions = [launch_location(request, domain, i, spec.deep_link) for i in reply.sessions if valid_id(i)]
        limit = gw.catalogue.settings.per_browser_limit
        headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
        if wants_json(request):
            return web.json_response({"status": "limit", "app": spec.name, "limit": limit, "sessions": sessions},
                                     status=429, headers=headers)
        return web.Response(text=pages.limit_page(spec, limit, sessions), content_type="text/html",
                            status=429, headers=headers)

    paused = isinstance(reply, ClaimRefused) and reply.reason == "paused"
    retry = DEFAULT_RETRY_AFTER
    if isinstance(reply, ClaimRefused) and reply.retry_after > 0:
        retry = max(1, math.ceil(reply.retry_after))
    gw.metrics.launches.labels(spec.name, "waiting").inc()
    headers = {"Retry-After": str(retry), "Cache-Control": "no-store"}
    if wants_json(request):
        return web.json_response({"status": "paused" if paused else "waiting", "app": spec.name,
                                  "retry_after": retry}, status=503, headers=headers)
    return web.Response(text=pages.waiting_page(spec, retry, paused=paused), content_type="text/html",
                        status=503, headers=headers)


def is_preview_agent(user_agent: str) -> bool:
    """A link preview, crawler or scanner that announces itself: it must never take a session."""
    return PREVIEW_AGENTS.search(user_agent) is not None


def browser_key(request: web.Request) -> tuple[str, str | None]:
    """The browser's opaque key for the bus (a hash: the cookie itself never leaves the gateway),
    and a new cookie value to set when it came without a valid one."""
    value = request.cookies.get(BROWSER_COOKIE, "")
    new = None
    if not _BROWSER_VALUE.fullmatch(value):
        value = new = secrets.token_urlsafe(16)
    return hashlib.sha256(value.encode()).hexdigest()[:32], new


def _https(request: web.Request) -> bool:
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"


async def robots(request: web.Request) -> web.Response:
    return web.Response(text=ROBOTS_TXT, content_type="text/plain", headers={"Cache-Control": "max-age=3600"})


async def _claim(gw: Gateway, app: str, wait: float, browser: str = "") -> Claimed | ClaimRefused | ErrorReply | None:
    """Ask the claimers for one instance; None when nobody answered in time."""
    request = ClaimRequest(app=app, wait=wait, browser=browser)
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
