"""The catalogue page and `/launch/<app>`: a click becomes a claim request on the bus."""

from __future__ import annotations

import logging
import math
import time

import msgspec
from aiohttp import web

from swarmpool.bus.client import BusError, NoResponders, RequestTimeout
from swarmpool.bus.messages import Claimed, ClaimRefused, ClaimRequest, ErrorReply
from swarmpool.gateway import pages
from swarmpool.gateway.context import GATEWAY, Gateway, wants_json
from swarmpool.gateway.metrics import UNKNOWN_APP
from swarmpool.ids import instance_prefix, short_id, valid_id

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER = 3
CLAIM_GRACE = 2.0  # beyond the claimer's own wait, for the round trip


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

    wait = float(gw.catalogue.settings.claim_wait)
    started = time.monotonic()
    reply = await _claim(gw, spec.name, wait)
    gw.metrics.claim_latency.labels(spec.name).observe(time.monotonic() - started)

    if isinstance(reply, Claimed):
        gw.routes.add_claimed(reply.id, spec.name, reply.endpoint)
        gw.metrics.launches.labels(spec.name, "claimed").inc()
        log.info("launch %s: claimed %s", spec.name, short_id(spec.name, reply.id))
        location = instance_prefix(reply.id) + reply.deep_link.lstrip("/")
        raise web.HTTPSeeOther(location, headers={"Cache-Control": "no-store"})

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


async def _claim(gw: Gateway, app: str, wait: float) -> Claimed | ClaimRefused | ErrorReply | None:
    """Ask the claimers for one instance; None when nobody answered in time."""
    request = ClaimRequest(app=app, wait=wait)
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
