"""admin: what runs each operator verb of bus/verbs.py (``sp.admin.<verb>``, a nats.micro service run by
every functions host).

Each verb answers an ``AdminResult`` or a typed ``ErrorReply``, and every verb but status is kept in the
event log with who asked. Adding a verb is one entry in ``bus/verbs.VERBS`` and its handler in ``RUN``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any, TypeAlias

import msgspec

from swarmpool.bus.links import Links, info, short_link
from swarmpool.bus.messages import (AdminCommand, AdminEvent, AdminResult, AppStatus, DrainRequest, ErrorReply,
                                    LinkRequest, LinksRequest, PauseRequest, ReloadRequest, Requester,
                                    ResumeRequest, RetireRequest, RevokeRequest, RotateRequest, ScaleRequest,
                                    StatusRequest)
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import catalogue_file
from swarmpool.bus.verbs import Verb
from swarmpool.catalogue import CatalogueError, check_images, check_network, parse, restart_only_changes
from swarmpool.functions import keeper, lifecycle
from swarmpool.functions.policy import counts, spec_version, target
from swarmpool.functions.queue import queue_length
from swarmpool.guardrails import trust_flags, trust_summary
from swarmpool.ids import short_id

log = logging.getLogger(__name__)
handlers = Handlers()  # the verbs are served by the admin service (swarmpool/host.py), not the runtime

Reply: TypeAlias = "AdminResult | ErrorReply"


# ---- status ----


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def status_of(ctx: Context, app: str) -> AppStatus:
    """Where one app's pool stands, from this host's mirror."""
    override = ctx.config.cached(app)
    records = ctx.store.all(app)
    c = counts(records)
    size, source = target(ctx.app(app), override, ctx.clock(), ctx.settings.timezone)
    ready_times = [r.ready_at - r.created_at for r in records if r.ready_at is not None]
    claim = ctx.metrics.recent_claim_seconds(app)
    spec = ctx.app(app)
    return AppStatus(app=app, target=size, target_source=source, paused=override.paused,
                     starting=c["starting"], ready=c["ready"], claimed=c["claimed"], retiring=c["retiring"],
                     failed=c["failed"], claim_seconds=None if claim is None else round(claim, 4),
                     ready_seconds=_median(ready_times),
                     trusted=trust_flags(spec, ctx.settings) if spec is not None else [],
                     queued=queue_length(ctx, app))


def _statuses(ctx: Context, apps: list[str]) -> dict[str, AppStatus]:
    return {a: status_of(ctx, a) for a in apps}


def _apps(ctx: Context, app: str | None, every: bool, verb: str) -> list[str] | ErrorReply:
    """The apps a verb acts on: one named app, or all of them with --all (status: all by default)."""
    if app is not None and every:
        return ErrorReply(error="bad_request", detail=f"{verb}: name an app or --all, not both")
    if app is None:
        if every or verb == "status":
            return list(ctx.catalogue.apps)
        return ErrorReply(error="bad_request", detail=f"{verb}: name an app, or --all for every app")
    if app not in ctx.catalogue.apps:
        return ErrorReply(error="unknown_app", detail=app)
    return [app]


async def status(ctx: Context, request: StatusRequest) -> Reply:
    apps = _apps(ctx, request.app, False, "status")
    if isinstance(apps, ErrorReply):
        return apps
    return AdminResult(apps=_statuses(ctx, apps))


# ---- pool overrides ----


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


async def scale(ctx: Context, request: ScaleRequest) -> Reply:
    apps = _apps(ctx, request.app, False, "scale")
    if isinstance(apps, ErrorReply):
        return apps
    until = ctx.clock() + request.for_seconds if request.for_seconds is not None else None
    await ctx.config.update(request.app, lambda o: msgspec.structs.replace(o, size=request.size, until=until))
    await keeper.top_up(ctx, request.app)
    detail = f"scale {request.app} to {request.size}" + (f" until {_iso(until)}" if until is not None else "")
    return AdminResult(detail=detail, apps=_statuses(ctx, apps))


async def _set_paused(ctx: Context, apps: list[str], paused: bool) -> None:
    for app in apps:
        await ctx.config.update(app, lambda o: msgspec.structs.replace(o, paused=paused))


async def pause(ctx: Context, request: PauseRequest) -> Reply:
    apps = _apps(ctx, request.app, request.all, "pause")
    if isinstance(apps, ErrorReply):
        return apps
    await _set_paused(ctx, apps, True)
    return AdminResult(detail=f"pause {', '.join(apps)}: no new claims", apps=_statuses(ctx, apps))


async def resume(ctx: Context, request: ResumeRequest) -> Reply:
    apps = _apps(ctx, request.app, request.all, "resume")
    if isinstance(apps, ErrorReply):
        return apps
    await _set_paused(ctx, apps, False)
    for app in apps:
        await keeper.top_up(ctx, app)
    return AdminResult(detail=f"resume {', '.join(apps)}", apps=_statuses(ctx, apps))


async def drain(ctx: Context, request: DrainRequest) -> Reply:
    """Pause and retire the warm pool; claimed sessions run to their end."""
    apps = _apps(ctx, request.app, request.all, "drain")
    if isinstance(apps, ErrorReply):
        return apps
    await _set_paused(ctx, apps, True)
    warm = [r for app in apps for r in ctx.store.all(app) if r.state in ("ready", "starting")]
    await ctx.each("drain", (lifecycle.retire(ctx, r.app, r.id, "drained by operator") for r in warm))
    return AdminResult(detail=f"drain {', '.join(apps)}: {len(warm)} warm instances retiring",
                       apps=_statuses(ctx, apps))


async def retire(ctx: Context, request: RetireRequest) -> Reply:
    """Retire one instance by its id or a prefix of it (the short form logs and events show)."""
    if request.app is not None and request.app not in ctx.catalogue.apps:
        return ErrorReply(error="unknown_app", detail=request.app)
    found = [r for r in ctx.store.all(request.app) if r.id.startswith(request.id)]
    if not found:
        return ErrorReply(error="unknown_instance", detail=f"no instance id starts with {request.id[:4]}")
    if len(found) > 1:
        return ErrorReply(error="ambiguous", detail=f"{len(found)} instances match; give more of the id")
    (record,) = found
    await lifecycle.retire(ctx, record.app, record.id, "retired by operator")
    return AdminResult(detail=f"retire {short_id(record.app, record.id)}", apps=_statuses(ctx, [record.app]))


# ---- reload ----


def _changed(old: Catalogue, new: Catalogue) -> list[str]:
    """Apps whose instances the new catalogue recycles (another image or command)."""
    return sorted(a for a in set(old.apps) & set(new.apps)
                  if spec_version(old.apps[a]) != spec_version(new.apps[a]))


TRUSTED = "trusted"  # the event log's verb (sp.audit.trusted) for an app loaded with trust


async def announce_trust(ctx: Context, catalogue: Catalogue, source: str, by: Requester) -> None:
    """Keep in the event log that a catalogue with trusted apps was loaded: one event per such app."""
    for name, app in catalogue.apps.items():
        if summary := trust_summary(app, catalogue.settings):
            log.warning("app %s is trusted with %s (catalogue %s)", name, summary, source or "?")
            await ctx.publish(ctx.subjects.audit(TRUSTED), AdminEvent(
                verb=TRUSTED, app=name, at=ctx.clock(), reason=f"loaded trusted with {summary} from {source or '?'}",
                by=by))


async def reload(ctx: Context, request: ReloadRequest) -> Reply:
    """Store a new catalogue on the bus for every host: parsed by the loader every host starts with,
    so a bad file is refused with the same error as at start, and nothing changes."""
    try:
        new = parse(request.text, request.source, ctx.namespace, calendars=request.calendars)
        await check_images(new, request.source, ctx.swarm.image_accounts)  # root by name, where the image is
        await check_network(new, request.source, ctx.namespace, ctx.swarm.network_info)  # the engine's network
    except CatalogueError as err:
        return ErrorReply(error="bad_catalogue", detail=str(err))
    old = ctx.catalogue
    file = catalogue_file(request.text, request.source, ctx.clock(), request.by, calendars=new.calendars)
    if ctx.catalogues is None:
        return ErrorReply(error="unavailable", detail="this host does not follow the catalogue on the bus")
    await ctx.catalogues.publish(file)  # this host adopts it within publish (its on_change); the others follow the key
    await announce_trust(ctx, new, request.source, request.by)
    added, removed = sorted(set(new.apps) - set(old.apps)), sorted(set(old.apps) - set(new.apps))
    parts = [f"reload {request.source}: version {file.version}"]
    parts += [f"{what} {', '.join(apps)}" for what, apps in
              (("added", added), ("removed (draining)", removed), ("recycling", _changed(old, new))) if apps]
    if kept := restart_only_changes(old, new):
        parts.append(f"restart-only, unchanged until the hosts and gateways restart: {', '.join(kept)}")
    for app in added:
        await ctx.isolated(f"top up {app}", keeper.top_up(ctx, app))
    return AdminResult(detail="; ".join(parts), apps=_statuses(ctx, list(new.apps)))


# ---- lecture links ----


async def link(ctx: Context, request: LinkRequest) -> Reply:
    """A new lecture link; its token is in the answer's path only (never in the detail: that is logged)."""
    spec = ctx.app(request.app)
    if spec is None:
        return ErrorReply(error="unknown_app", detail=request.app)
    links = Links(ctx.config.kv)
    made, token = await links.create(request.app, request.for_seconds, request.max, request.label, request.by,
                                     ctx.clock())
    keys, _ = await links.keys()
    detail = (f"link {short_link(made.id)} for {request.app}" + (f" ({request.label})" if request.label else "")
              + f" until {_iso(made.expires)}" + (f", at most {request.max} claims" if request.max else "")
              + ("" if spec.require_link else f"; note: {request.app} does not set require_link, so its "
                 "launch page opens without a link too"))
    return AdminResult(detail=detail, link=info(made, keys, ctx.clock(), path=f"/launch/{request.app}?l={token}"))


async def links_list(ctx: Context, request: LinksRequest) -> Reply:
    if request.app is not None and request.app not in ctx.catalogue.apps:
        return ErrorReply(error="unknown_app", detail=request.app)
    links = Links(ctx.config.kv)
    keys, _ = await links.keys()
    now = ctx.clock()
    shown = [info(found, keys, now) for found in await links.all() if request.app in (None, found.app)]
    return AdminResult(detail=f"{len(shown)} link(s)", links=shown)


async def revoke(ctx: Context, request: RevokeRequest) -> Reply:
    """Revoke a link by its id or a prefix of it: its next claims are refused on every host."""
    links = Links(ctx.config.kv)
    found = [f for f in await links.all() if f.id.startswith(request.id)]
    if not found:
        return ErrorReply(error="unknown_link", detail=f"no link id starts with {request.id[:4]}")
    if len(found) > 1:
        return ErrorReply(error="ambiguous", detail=f"{len(found)} links match; give more of the id")
    done = await links.update(found[0].id, lambda f: msgspec.structs.replace(f, revoked=True))
    if done is None:
        return ErrorReply(error="unknown_link", detail=f"no link id starts with {request.id[:4]}")
    keys, _ = await links.keys()
    return AdminResult(detail=f"revoke link {short_link(done.id)} of {done.app} after {done.claims} claim(s)",
                       links=[info(done, keys, ctx.clock())])


async def rotate(ctx: Context, request: RotateRequest) -> Reply:
    """A new link signing key, for every gateway without a restart (they follow the key)."""
    key, retired = await Links(ctx.config.kv).rotate(ctx.clock(), request.retire)
    detail = f"rotate: new link signing key {key.kid}"
    if retired:
        detail += f"; retired {', '.join(retired)} (links signed with them no longer work)"
    else:
        detail += "; older keys still verify their links"
    return AdminResult(detail=detail)


# ---- the table ----

RUN: dict[str, Callable[[Context, Any], Awaitable[Reply]]] = {
    "status": status, "scale": scale, "pause": pause, "resume": resume, "drain": drain, "reload": reload,
    "retire": retire, "link": link, "links": links_list, "revoke": revoke, "rotate": rotate,
}


def describe(request: AdminCommand, reply: Reply) -> str:
    """The event log's reason for a command."""
    if isinstance(reply, ErrorReply):
        return f"refused: {reply.error} {reply.detail}".strip()
    return reply.detail


async def run(ctx: Context, verb: Verb, request: AdminCommand) -> Reply:
    """Run one verb; keep what it changed in the event log, with who asked (self-reported)."""
    reply = await RUN[verb.name](ctx, request)
    ok = not isinstance(reply, ErrorReply)
    ctx.metrics.admin_commands.labels(verb.name, reply.error if isinstance(reply, ErrorReply) else "ok").inc()
    if verb.changes:
        app = getattr(request, "app", None) or ""
        by = request.by
        log.info("admin %s by %s@%s: %s", verb.name, by.user or "?", by.host or "?", describe(request, reply))
        event = AdminEvent(verb=verb.name, app=app, at=ctx.clock(), reason=describe(request, reply), by=by, ok=ok)
        await ctx.publish(ctx.subjects.audit(verb.name), event)
    return reply
