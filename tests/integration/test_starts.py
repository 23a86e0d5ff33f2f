"""Starts flow at the pace the engine bears: the real stack (functions host, nats-server, the swarm, echo)."""

from __future__ import annotations

import os

import pytest

from swarmpool.bus.messages import Instance
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker

CORES = os.cpu_count() or 1


async def test_a_warm_up_widens_past_the_cores_and_each_ready_start_lets_the_next_begin_at_once(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    """No timer brings the next starts here (reconcile and refill_delay are 10 minutes): only a start that
    ended can. The fixed budget (the cores) started that many, then waited for a timer; the budget that
    follows quick starts widens past the cores and the pool fills."""
    size = 4 * CORES
    catalogue = (echo_catalogue(size=size, max_=size, parallel=size)
                 .replace("reconcile_interval = 1\n", "reconcile_interval = 600\n")
                 .replace("refill_delay = 0.2\n", "refill_delay = 600\n"))
    async with running_stack(nats_server.url, namespace, catalogue) as s:
        highest = 0

        def watch(old: Instance | None, new: Instance | None) -> None:
            nonlocal highest
            highest = max(highest, len(s.records("starting")))

        s.store.on_change(watch)
        await wait_for(lambda: len(s.records("ready")) == size or None, timeout=240,
                       what=f"{size} ready with no timer to start them")
        assert highest > CORES, f"never more than {highest} starting at once ({CORES} cores)"
        assert len(await s.swarm.list_ours()) == size


async def test_reconcile_records_each_starts_time_by_the_engines_own_task_timestamps(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    """The start budget judges a node by what its engine says of each task (created -> running), recorded on the
    record with its node by the reconcile pass: never by a functions host's clock alone."""
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=2, max_=2)) as s:
        def timed_and_placed() -> list[Instance] | None:
            ready = s.records("ready")
            return ready if len(ready) == 2 and all(r.task_start is not None and r.node for r in ready) else None

        timed = await wait_for(timed_and_placed, timeout=120, what="2 ready with the engine's start time recorded")
        tasks = await s.swarm.task_states()
        for r in timed:
            task = tasks[r.service_id]
            assert task.running_at is not None and r.task_start == pytest.approx(task.running_at - task.created_at)
            assert 0 <= r.task_start <= (r.ready_at or 0) - r.created_at + 1  # within the whole start (clocks: 1 s)
