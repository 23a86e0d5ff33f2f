"""Reload tells the truth: every restart-only field is declared in one place and named when a reload changes
it; the clock's intervals follow a reloaded catalogue."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import msgspec

from swarmpool.bus.messages import Period
from swarmpool.bus.spec import AppSpec, Catalogue, Interval, Pool, Settings
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import RESTART_ONLY, restart_only_changes
from swarmpool.functions.clock import tick


def test_restart_only_names_real_fields() -> None:
    settings = set(Settings.__struct_fields__)
    for key in RESTART_ONLY:
        where, _, field = key.rpartition(".")
        if where == "settings":
            assert field in settings, key
        else:
            assert where.startswith("apps.*."), key
            section = where.split(".")[2]
            assert section in AppSpec.__struct_fields__, key
            assert field in type(getattr(AppSpec(image="x", port=1), section)).__struct_fields__, key


def test_a_reload_names_the_restart_only_fields_it_changes() -> None:
    app = AppSpec(name="demo", image="x", port=1)
    old = Catalogue(apps={"demo": app})
    assert restart_only_changes(old, old) == []
    new = Catalogue(settings=msgspec.structs.replace(Settings(), heartbeat_interval=Interval(2.0), claim_wait=9.0),
                    apps={"demo": msgspec.structs.replace(app, pool=Pool(max_parallel_starts=2)),
                          "other": AppSpec(name="other", image="y", port=2, pool=Pool(max_parallel_starts=1))})
    # claim_wait applies on reload, and an app's parallel starts too (the plan of each top-up reads them)
    assert restart_only_changes(old, new) == ["settings.heartbeat_interval"]


async def test_the_clock_follows_a_reloaded_reconcile_interval() -> None:
    """A functions host's clock reads its intervals again each round: a reload that shortens the reconcile
    interval from an hour to 50 ms brings the next reconcile tick at once (before: only after a restart)."""
    ticks: list[tuple[str, float]] = []
    settings = SimpleNamespace(tick_interval=0.01, reconcile_interval=3600.0)

    async def publish(subject: str, message: Any) -> None:
        ticks.append((message.period, time.monotonic()))

    ctx = SimpleNamespace(settings=settings, subjects=Subjects("sp"), clock=time.time, publish=publish)
    clock = asyncio.create_task(tick(ctx))  # type: ignore[arg-type]
    try:
        async def reconciles(n: int) -> None:
            while sum(1 for period, _ in ticks if period == Period.RECONCILE) < n:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(reconciles(1), 5)  # at once on start
        fast_before = sum(1 for period, _ in ticks if period == Period.FAST)
        await asyncio.wait_for(_fast_ticks(ticks, fast_before + 5), 5)  # the clock runs on, no reconcile
        assert sum(1 for period, _ in ticks if period == Period.RECONCILE) == 1
        settings.reconcile_interval = 0.05  # what adopting a reloaded catalogue does to ctx.settings
        await asyncio.wait_for(reconciles(3), 5)
    finally:
        clock.cancel()


async def _fast_ticks(ticks: list[tuple[str, float]], n: int) -> None:
    while sum(1 for period, _ in ticks if period == Period.FAST) < n:
        await asyncio.sleep(0.005)
