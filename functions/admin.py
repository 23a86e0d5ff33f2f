"""admin: the operators' verbs, one table that drives both the admin service's endpoints
(``sp.admin.<verb>``, a nats.micro service run by every functions host) and the CLI's arguments.

Each verb has a tagged request Struct (bus/messages.py), answers an ``AdminResult`` or a typed
``ErrorReply``, and every verb but status is kept in the event log with who asked.
Adding a verb is one more entry in ``VERBS``.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Awaitable, Callable
import dataclasses
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeAlias

import msgspec

from swarmpool.bus.messages import (AdminCommand, AdminEvent, AdminResult, AppStatus, DrainRequest, ErrorReply,
                                    PauseRequest, ReloadRequest, ResumeRequest, RetireRequest, ScaleRequest,
                                    StatusRequest)
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.bus.spec import parse_duration
from swarmpool.functions import keeper, lifecycle
from swarmpool.bus.spec import Catalogue
from swarmpool.functions.policy import counts, spec_version, target
from swarmpool.guardrails import trust_flags
from swarmpool.ids import short_id

log = logging.getLogger(__name__)
handlers = Handlers()  # the verbs are served by the admin service (swarmpool/host.py), not the runtime

Reply: TypeAlias = "AdminResult | ErrorReply"


@dataclass(frozen=True)
class Arg:
    """How the CLI gives one field of a verb's request: argparse flags and options, and a converter."""

    field: str
    flags: tuple[str, ...]
    help: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    convert: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Verb:
    """One operator verb: its request Struct, what runs it, and how the CLI asks for it."""

    name: str
    request: type[AdminCommand]
    run: Callable[[Context, Any], Awaitable[Reply]]
    help: str
    args: tuple[Arg, ...] = ()
    changes: bool = True  # kept in the event log


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
                     trusted=trust_flags(spec, ctx.settings) if spec is not None else [])


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


async def reload(ctx: Context, request: ReloadRequest) -> Reply:
    """Store a new catalogue on the bus for every host: parsed by the loader every host starts with,
    so a bad file is refused with the same error as at start, and nothing changes."""
    from swarmpool.catalogue import CatalogueError, check_images, parse
    from swarmpool.host import adopt, announce_trust, catalogue_file

    try:
        new = parse(request.text, request.source, ctx.namespace)
        await check_images(new, request.source, ctx.swarm.image_accounts)  # root by name, where the image is
    except CatalogueError as err:
        return ErrorReply(error="bad_catalogue", detail=str(err))
    old = ctx.catalogue
    file = catalogue_file(request.text, request.source, ctx.clock(), request.by)
    if ctx.catalogues is None:
        return ErrorReply(error="unavailable", detail="this host does not follow the catalogue on the bus")
    await ctx.catalogues.publish(file)
    adopt(ctx, file)  # here at once; the other hosts and gateways follow the key
    await announce_trust(ctx, new, request.source, request.by)
    added, removed = sorted(set(new.apps) - set(old.apps)), sorted(set(old.apps) - set(new.apps))
    parts = [f"reload {request.source}: version {file.version}"]
    parts += [f"{what} {', '.join(apps)}" for what, apps in
              (("added", added), ("removed (draining)", removed), ("recycling", _changed(old, new))) if apps]
    for app in added:
        await ctx.isolated(f"top up {app}", keeper.top_up(ctx, app))
    return AdminResult(detail="; ".join(parts), apps=_statuses(ctx, list(new.apps)))


# ---- the table ----

APP = Arg("app", ("app",), "the app (a name from the catalogue)")
APP_OR_ALL = (Arg("app", ("app",), "the app (or --all)", {"nargs": "?"}),
              Arg("all", ("--all",), "every app in the catalogue", {"action": "store_true"}))

VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("status", StatusRequest, status, "where each pool stands: target (and the rule that set it), "
         "ready, starting, claimed, retiring, failed", (Arg("app", ("app",), "one app only", {"nargs": "?"}),),
         changes=False),
    Verb("scale", ScaleRequest, scale, "keep N ready instances of an app, overriding the catalogue and "
         "its schedule (until changed, or for a while with --for)",
         (APP, Arg("size", ("size",), "ready instances to keep", {"type": int, "metavar": "N"}),
          Arg("for_seconds", ("--for",), "only this long, e.g. 90m or 2h (then the catalogue's rules again)",
              {"metavar": "DURATION"}, convert=lambda text: float(parse_duration(text))))),
    Verb("pause", PauseRequest, pause, "refuse new claims (the warm pool stays)", APP_OR_ALL),
    Verb("resume", ResumeRequest, resume, "accept claims again and refill the pool", APP_OR_ALL),
    Verb("drain", DrainRequest, drain, "pause and retire the warm pool; running sessions go on", APP_OR_ALL),
    Verb("reload", ReloadRequest, reload, "load a new catalogue file on every host: new apps warm up, removed "
         "ones drain, changed ones are recycled gradually (claimed instances are never touched)",
         (Arg("text", ("catalogue",), "the catalogue file (read and checked here, as at start)",
              {"metavar": "FILE"}),)),
    Verb("retire", RetireRequest, retire, "retire one instance by its id or its short prefix",
         (Arg("id", ("id",), "the instance id, or its first 4+ characters", {"metavar": "ID_PREFIX"}),
          Arg("app", ("--app",), "look in this app only"))),
)}


def describe(request: AdminCommand, reply: Reply) -> str:
    """The event log's reason for a command."""
    if isinstance(reply, ErrorReply):
        return f"refused: {reply.error} {reply.detail}".strip()
    return reply.detail


async def run(ctx: Context, verb: Verb, request: AdminCommand) -> Reply:
    """Run one verb; keep what it changed in the event log, with who asked (self-reported)."""
    reply = await verb.run(ctx, request)
    ok = not isinstance(reply, ErrorReply)
    ctx.metrics.admin_commands.labels(verb.name, reply.error if isinstance(reply, ErrorReply) else "ok").inc()
    if verb.changes:
        app = getattr(request, "app", None) or ""
        by = request.by
        log.info("admin %s by %s@%s: %s", verb.name, by.user or "?", by.host or "?", describe(request, reply))
        event = AdminEvent(verb=verb.name, app=app, at=ctx.clock(), reason=describe(request, reply), by=by, ok=ok)
        await ctx.publish(ctx.subjects.audit(verb.name), event)
    return reply
