"""One small handler per file; `all_handlers()` collects their tables for the runtime."""

from __future__ import annotations

from bus.runtime import Handlers


def all_handlers() -> list[Handlers]:
    from functions import activity, admin, claimer, clock, docker_events, keeper, prober, reaper

    return [m.handlers for m in (keeper, prober, claimer, activity, reaper, docker_events, clock, admin)]
