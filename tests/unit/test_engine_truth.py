"""Truth from the engine: which records are dead by their tasks' states, and when claims may
trust the pool (issue 8, section 1). Pure decisions: no Docker, no NATS."""

from __future__ import annotations

import msgspec
import pytest

from swarmpool.bus.messages import EngineTrust, Instance
from swarmpool.functions.policy import dead_instances
from swarmpool.ids import new_instance_id

NOW = 10_000.0


def inst(state: str, service_id: str = "svc") -> Instance:
    return msgspec.convert(dict(id=new_instance_id(), app="echo", state=state, created_at=NOW - 100,
                                service_id=service_id), Instance)


@pytest.mark.parametrize("record, task, dead", [
    ("ready", "running", False),
    ("ready", "failed", True),  # the engine restarted: warm instance dead -> failed, replaced
    ("ready", "shutdown", True),
    ("ready", "complete", True),
    ("ready", "pending", True),  # a ready instance whose task does not run is dead
    ("claimed", "running", False),
    ("claimed", "failed", True),  # session ends (retiring), never handed a 502
    ("claimed", "orphaned", True),
    ("starting", "pending", False),  # not running yet is normal while starting
    ("starting", "preparing", False),
    ("starting", "running", False),
    ("starting", "rejected", True),
    ("starting", "failed", True),
    ("retiring", "failed", False),  # already on its way out
    ("failed", "failed", False),
    ("ready", None, False),  # service not listed: ghost_records' business, not this one's
])
def test_dead_instances_by_task_state(record: str, task: str | None, dead: bool) -> None:
    r = inst(record)
    tasks = {} if task is None else {"svc": task}
    found = dead_instances([r], tasks)
    assert [x.id for x, _ in found] == ([r.id] if dead else [])
    if dead:
        assert task in found[0][1]  # the reason names what the engine said


def test_a_record_without_service_is_never_judged_by_another_task() -> None:
    assert dead_instances([inst("ready", service_id="")], {"": "failed"}) == []


def test_only_the_records_own_service_counts() -> None:
    alive, gone = inst("ready", "a"), inst("ready", "b")
    assert [r.id for r, _ in dead_instances([alive, gone], {"a": "running", "b": "shutdown"})] == [gone.id]


@pytest.mark.parametrize("gap, reconciled, trusted", [
    (0, 0, True),  # a fresh namespace: nothing was missed
    (1, 0, False),  # a gap opened (stream broke, swarmpool started): claims wait
    (1, 1, True),  # a reconcile that started after it has finished
    (3, 2, False),  # a newer gap than the last reconcile covered
    (2, 3, True),
])
def test_claims_trust_the_pool_only_after_a_reconcile_covering_the_last_gap(gap: int, reconciled: int,
                                                                              trusted: bool) -> None:
    assert EngineTrust(gap=gap, reconciled=reconciled).trusted is trusted
