"""Pure decisions of the pool, table-driven, no I/O, no sleeps."""

from __future__ import annotations

import msgspec
import pytest

from swarmpool.bus.messages import Activity, Instance, PoolOverride
from swarmpool.bus.spec import AppSpec, Duration, Pool, Probe, Session
from swarmpool.functions.policy import (
    apply_activity,
    backoff_delay,
    ghost_records,
    leaked_services,
    pick_claim_order,
    retire_reason,
    starts_needed,
    surplus_ready,
    target,
)

NOW = 10_000.0
SPEC = AppSpec(
    name="echo", image="echo", port=80,
    probe=Probe(timeout=Duration(60)),
    pool=Pool(size=3, max=5, max_warm_age=Duration(3600)),
    session=Session(idle_timeout=Duration(600), disconnect_grace=Duration(120), max_lifetime=Duration(7200)),
)


def inst(state: str = "claimed", **kw: object) -> Instance:
    base: dict[str, object] = dict(id="a" * 26, app="echo", state=state, created_at=NOW - 100)
    if state == "claimed":
        base.update(claimed_at=NOW - 50, last_activity=NOW - 10, connections=1)
    if state == "ready":
        base.update(ready_at=NOW - 90)
    base.update(kw)
    return msgspec.convert(base, Instance)


def many(**states: int) -> list[Instance]:
    out = []
    for state, n in states.items():
        out += [inst(state, id=f"{state}{i}".ljust(26, "x")) for i in range(n)]
    return out


@pytest.mark.parametrize("records, target, limit, parallel, free, expected", [
    (many(), 3, 5, 8, 100, 3),                                  # cold start
    (many(ready=2), 3, 5, 8, 100, 1),                           # one short
    (many(ready=2, starting=1), 3, 5, 8, 100, 0),               # starting counts
    (many(ready=3, claimed=2), 3, 5, 8, 100, 0),                # at max
    (many(ready=1, claimed=3), 3, 5, 8, 100, 1),                # max bounds refill
    (many(ready=0), 10, 20, 4, 100, 4),                         # parallel starts bound
    (many(ready=0, starting=3), 10, 20, 4, 100, 1),
    (many(), 10, 20, 8, 2, 2),                                  # global capacity bound
    (many(ready=5), 3, 5, 8, 100, 0),                           # above target: never negative
    (many(failed=2, retiring=3), 3, 5, 8, 100, 3),              # failed/retiring don't count
])
def test_starts_needed(records: list[Instance], target: int, limit: int, parallel: int, free: int,
                       expected: int) -> None:
    assert starts_needed(records=records, target=target, limit=limit, max_parallel=parallel,
                         global_free=free) == expected


@pytest.mark.parametrize("record, expected", [
    (inst(), None),                                                            # active session
    (inst(claimed_at=NOW - 700, last_activity=NOW - 601), "idle"),                                   # idle
    (inst(last_activity=NOW - 599, connections=1), None),
    (inst(claimed_at=NOW - 200, connections=0, disconnected_at=NOW - 121, last_activity=NOW - 121),
     "disconnected"),
    (inst(claimed_at=NOW - 200, connections=0, disconnected_at=NOW - 30, last_activity=NOW - 121), None),
    (inst(claimed_at=NOW - 7201, last_activity=NOW - 1), "max lifetime"),      # busy tab still ends
    (inst(claimed_at=NOW - 200, last_activity=None, connections=0), "disconnected"),  # never opened
    (inst("ready", ready_at=NOW - 3601), "recycled"),
    (inst("ready"), None),
    (inst("starting", created_at=NOW - 61), "not ready"),
    (inst("starting", created_at=NOW - 59), None),
    (inst("failed", reason="container exited with 1"), "container exited"),
    (inst("retiring"), None),
])
def test_retire_reason(record: Instance, expected: str | None) -> None:
    reason = retire_reason(record, SPEC, NOW)
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and reason.startswith(expected), reason


def test_retire_reason_rules_can_be_disabled() -> None:
    spec = msgspec.structs.replace(SPEC, session=Session(idle_timeout=None, disconnect_grace=None,
                                                         max_lifetime=None))
    assert retire_reason(inst(last_activity=NOW - 10**6, connections=0), spec, NOW) is None


def test_unknown_app_retires_warm_but_not_sessions() -> None:
    assert retire_reason(inst("ready"), None, NOW) is not None
    assert retire_reason(inst("claimed"), None, NOW) is None


def test_activity_updates_traffic_and_connections() -> None:
    r = inst(connections=0, used=False, last_activity=NOW - 100)
    after = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=2, traffic=True))
    assert after is not None and after.connections == 2 and after.used and after.last_activity == NOW
    gone = apply_activity(after, Activity(app="echo", id=r.id, at=NOW + 5, connections=0, traffic=False))
    assert gone is not None and gone.disconnected_at == NOW + 5 and gone.last_activity == NOW


def test_connections_are_summed_over_gateways() -> None:
    r = inst(connections=0)
    a = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=1, gateway="gw1"))
    assert a is not None
    b = apply_activity(a, Activity(app="echo", id=r.id, at=NOW + 1, connections=2, gateway="gw2"))
    assert b is not None and b.connections == 3
    c = apply_activity(b, Activity(app="echo", id=r.id, at=NOW + 2, connections=0, gateway="gw1"))
    assert c is not None and c.connections == 2 and c.disconnected_at is None  # gw2 still holds two
    d = apply_activity(c, Activity(app="echo", id=r.id, at=NOW + 3, connections=0, gateway="gw2"))
    assert d is not None and d.connections == 0 and d.disconnected_at == NOW + 3


def test_keepalives_alone_do_not_count_as_traffic() -> None:
    r = inst(last_activity=NOW - 100)
    after = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=1, traffic=False))
    assert after is not None and after.last_activity == NOW - 100


def test_stale_heartbeat_is_ignored() -> None:
    r = inst(heartbeat_at=NOW)
    assert apply_activity(r, Activity(app="echo", id=r.id, at=NOW - 1, connections=0)) is None


def test_activity_ignored_unless_claimed() -> None:
    assert apply_activity(inst("ready"), Activity(app="echo", id="a" * 26, at=NOW, traffic=True)) is None


def test_claim_order_oldest_ready_first_skipping_reserved() -> None:
    a = inst("ready", id="a" * 26, ready_at=NOW - 10)
    b = inst("ready", id="b" * 26, ready_at=NOW - 20)
    c = inst("claimed", id="c" * 26)
    assert [r.id for r in pick_claim_order([a, b, c], set())] == [b.id, a.id]
    assert [r.id for r in pick_claim_order([a, b, c], {b.key})] == [a.id]


def test_surplus_ready_keeps_the_oldest() -> None:
    records = [inst("ready", id=f"r{i}".ljust(26, "x"), ready_at=NOW - 100 + i) for i in range(5)]
    records.append(inst("claimed", id="c".ljust(26, "x")))
    assert [r.id[:2] for r in surplus_ready(records, 3)] == ["r3", "r4"]
    assert surplus_ready(records, 5) == [] and surplus_ready(records, 9) == []


@pytest.mark.parametrize("failures, delay", [(0, 0), (2, 0), (3, 2), (5, 8), (20, 60)])
def test_backoff(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def test_leaks_and_ghosts() -> None:
    assert leaked_services({"echo.x": NOW - 60, "echo.y": NOW - 1, "echo.z": NOW - 60},
                           {"echo.z"}, NOW, 30) == ["echo.x"]
    with_service = inst("ready", id="s" * 26, service_id="svc1", created_at=NOW - 60)
    vanished = inst("ready", id="v" * 26, service_id="svc2", created_at=NOW - 60)
    young = inst("starting", id="y" * 26, service_id="svc3", created_at=NOW - 5)
    never = inst("starting", id="n" * 26, created_at=NOW - 60)
    retiring = inst("retiring", id="r" * 26, service_id="svc4", created_at=NOW - 60)
    ghosts = ghost_records([with_service, vanished, young, never, retiring], {"svc1"}, NOW, 30)
    assert {g.id for g in ghosts} == {vanished.id, never.id}


@pytest.mark.parametrize("override, expected", [
    (PoolOverride(app="echo"), 3),                          # the catalogue's size
    (PoolOverride(app="echo", size=7), 7),                  # admin scale wins
    (PoolOverride(app="echo", size=0), 0),
    (PoolOverride(app="echo", size=7, paused=True), 0),     # paused: nothing to keep warm
])
def test_target(override: PoolOverride, expected: int) -> None:
    assert target(SPEC, override) == expected
    assert target(None, override) == 0
