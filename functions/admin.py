"""admin: operator commands on sp.admin.<verb> (status, scale, pause, resume, drain, retire)."""

from __future__ import annotations

import logging

import msgspec

from swarmpool.bus.messages import AdminReply, AdminRequest, AppStatus, ErrorReply
from swarmpool.bus.runtime import Context, Handlers
from swarmpool.functions import keeper, lifecycle
from swarmpool.functions.policy import counts, target

log = logging.getLogger(__name__)
handlers = Handlers()

Reply = AdminReply | ErrorReply


def status_of(ctx: Context, app: str) -> AppStatus:
    """Where one app's pool stands, from this host's mirror."""
    override = ctx.config.cached(app)
    c = counts(ctx.store.all(app))
    return AppStatus(app=app, target=target(ctx.app(app), override, ctx.clock(), ctx.settings.timezone).size, paused=override.paused,
                     starting=c["starting"], ready=c["ready"], claimed=c["claimed"],
                     retiring=c["retiring"], failed=c["failed"])


def _apps(ctx: Context, request: AdminRequest) -> list[str] | ErrorReply:
    if request.app is None:
        return list(ctx.catalogue.apps)
    if request.app not in ctx.catalogue.apps:
        return ErrorReply(error="unknown_app", detail=request.app)
    return [request.app]


VERBS = ("status", "scale", "pause", "resume", "drain", "retire")


async def admin(ctx: Context, verb: str, request: AdminRequest) -> Reply:
    apps = _apps(ctx, request)
    if isinstance(apps, ErrorReply):
        return apps
    if verb == "status":
        return AdminReply(apps=[status_of(ctx, a) for a in apps])
    if verb in ("scale", "pause", "resume", "drain"):
        if verb == "scale" and (request.size is None or request.size < 0):
            return ErrorReply(error="bad_request", detail="scale needs size >= 0")
        for app in apps:
            if verb == "scale":
                await ctx.config.update(app, lambda o: msgspec.structs.replace(o, size=request.size))
            else:
                paused = verb in ("pause", "drain")
                await ctx.config.update(app, lambda o: msgspec.structs.replace(o, paused=paused))
            log.info("admin %s %s", verb, app)
            if verb == "drain":  # retire the warm pool; claimed sessions run to their end
                await ctx.each("drain", (lifecycle.retire(ctx, app, r.id, "drained by operator")
                                         for r in ctx.store.all(app) if r.state in ("ready", "starting")))
            await keeper.top_up(ctx, app)
        return AdminReply(detail=f"{verb}: {', '.join(apps)}", apps=[status_of(ctx, a) for a in apps])
    # retire
    if not request.id or request.app is None:
        return ErrorReply(error="bad_request", detail="retire needs app and id")
    if ctx.store.get(request.app, request.id) is None:
        return ErrorReply(error="unknown_instance")
    await lifecycle.retire(ctx, request.app, request.id, "retired by operator")
    return AdminReply(detail="retired")


def _verb_handler(verb: str) -> None:
    """One subscription per verb: the verb is the subject's, nobody parses it out again."""

    async def handle(ctx: Context, request: AdminRequest) -> Reply:
        return await admin(ctx, verb, request)

    handle.__name__ = verb
    handlers.on(lambda s: s.admin(verb), AdminRequest, reply=True)(handle)


for _verb in VERBS:
    _verb_handler(_verb)
