"""One small handler per file; `all_handlers()` collects their tables for the runtime."""

from __future__ import annotations

from swarmpool.bus.runtime import Handlers


def all_handlers() -> list[Handlers]:
    from swarmpool.functions import activity, admin, claimer, clock, docker_events, keeper, prober, queue, reaper

    return [m.handlers for m in (keeper, prober, claimer, queue, activity, reaper, docker_events, clock, admin)]
