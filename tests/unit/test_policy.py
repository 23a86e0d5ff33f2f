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
    live_sessions,
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
    session=Session(idle_timeout=Duration(600), disconnect_grace=Duration(120), max_lifetime=Duration(7200),
                    unused_grace=Duration(30)),
)


def inst(state: str = "claimed", **kw: object) -> Instance:
    base: dict[str, object] = dict(id="a" * 26, handle="h", app="echo", state=state, created_at=NOW - 100)
    if state == "claimed":
        base.update(claimed_at=NOW - 50, last_activity=NOW - 10, connections=1, used=True)
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
    (inst(used=False, connections=0, claimed_at=NOW - 31, last_activity=NOW - 31), "unused"),  # a bot's claim
    (inst(used=False, connections=0, claimed_at=NOW - 29, last_activity=NOW - 29), None),  # still in grace
    (inst(used=True, connections=0, claimed_at=NOW - 31, disconnected_at=NOW - 31), None),  # used: the 2-min grace
    (inst(used=False, connections=1, claimed_at=NOW - 31), None),  # a socket is open: traffic arrived
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
                                                         max_lifetime=None, unused_grace=None))
    assert retire_reason(inst(last_activity=NOW - 10**6, connections=0), spec, NOW) is None
    assert retire_reason(inst(last_activity=NOW - 10**6, connections=0, used=False), spec, NOW) is None


def test_unknown_app_retires_warm_but_not_sessions() -> None:
    assert retire_reason(inst("ready"), None, NOW) is not None
    assert retire_reason(inst("claimed"), None, NOW) is None


def test_activity_updates_traffic_and_connections() -> None:
    r = inst(connections=0, used=False, last_activity=NOW - 100)
    after = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=2, traffic=True), NOW + 5)
    assert after is not None and after.connections == 2 and after.used and after.last_activity == NOW
    gone = apply_activity(after, Activity(app="echo", id=r.id, at=NOW + 5, connections=0, traffic=False), NOW + 5)
    assert gone is not None and gone.disconnected_at == NOW + 5 and gone.last_activity == NOW


def test_connections_are_summed_over_gateways() -> None:
    r = inst(connections=0)
    a = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=1, gateway="gw1"), NOW + 5)
    assert a is not None
    b = apply_activity(a, Activity(app="echo", id=r.id, at=NOW + 1, connections=2, gateway="gw2"), NOW + 5)
    assert b is not None and b.connections == 3
    c = apply_activity(b, Activity(app="echo", id=r.id, at=NOW + 2, connections=0, gateway="gw1"), NOW + 5)
    assert c is not None and c.connections == 2 and c.disconnected_at is None  # gw2 still holds two
    d = apply_activity(c, Activity(app="echo", id=r.id, at=NOW + 3, connections=0, gateway="gw2"), NOW + 5)
    assert d is not None and d.connections == 0 and d.disconnected_at == NOW + 3


def test_keepalives_alone_do_not_count_as_traffic() -> None:
    r = inst(last_activity=NOW - 100)
    after = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=1, traffic=False), NOW + 5)
    assert after is not None and after.last_activity == NOW - 100


def test_stale_heartbeat_is_ignored() -> None:
    r = inst(heartbeat_at=NOW)
    assert apply_activity(r, Activity(app="echo", id=r.id, at=NOW - 1, connections=0), NOW + 5) is None


def test_activity_ignored_unless_claimed() -> None:
    assert apply_activity(inst("ready"), Activity(app="echo", id="a" * 26, at=NOW, traffic=True), NOW + 5) is None


def test_claim_order_oldest_ready_first_skipping_reserved() -> None:
    a = inst("ready", id="a" * 26, ready_at=NOW - 10)
    b = inst("ready", id="b" * 26, ready_at=NOW - 20)
    c = inst("claimed", id="c" * 26)
    assert [r.id for r in pick_claim_order([a, b, c], set())] == [b.id, a.id]
    assert [r.id for r in pick_claim_order([a, b, c], {b.key})] == [a.id]


def test_claims_never_get_a_ready_instance_named_after_its_id() -> None:
    old_named = msgspec.structs.replace(inst("ready", id="d" * 26, ready_at=NOW - 30), handle="")
    newer = inst("ready", id="a" * 26, ready_at=NOW - 10)
    assert [r.id for r in pick_claim_order([old_named, newer], set())] == [newer.id]


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
    assert target(SPEC, override, NOW).size == expected
    assert target(None, override, NOW).size == 0


def test_heartbeats_are_ordered_per_gateway() -> None:
    # gw2's clock runs 20 s behind gw1's: its heartbeats still apply after gw1's
    r = inst(connections=0)
    a = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=1, gateway="gw1"), NOW)
    assert a is not None and a.gateway_heartbeats == {"gw1": NOW}
    b = apply_activity(a, Activity(app="echo", id=r.id, at=NOW - 20, connections=1, gateway="gw2"), NOW)
    assert b is not None and b.connections == 2
    assert apply_activity(b, Activity(app="echo", id=r.id, at=NOW - 21, connections=0, gateway="gw2"), NOW) is None
    c = apply_activity(b, Activity(app="echo", id=r.id, at=NOW - 19, connections=0, gateway="gw2"), NOW)
    assert c is not None and c.connections == 1


@pytest.mark.parametrize("at, applied", [
    (1e18, False),                    # forged: would freeze the record until max lifetime
    (float("inf"), False),
    (float("nan"), False),
    (NOW + 31, False),                # beyond the allowed skew
    (NOW + 29, True),                 # a gateway's clock slightly ahead
    (NOW, True),
])
def test_heartbeats_from_the_future_are_refused(at: float, applied: bool) -> None:
    r = inst(connections=0, used=False, last_activity=NOW - 100)
    after = apply_activity(r, Activity(app="echo", id=r.id, at=at, connections=1, traffic=True, gateway="gw"), NOW,
                           max_skew=30)
    assert (after is not None) == applied
    if after is not None:
        assert after.last_activity == NOW  # never later than the functions' clock
        # the next honest heartbeat of that gateway is not refused as stale for long
        later = apply_activity(after, Activity(app="echo", id=r.id, at=NOW + 30, connections=0, gateway="gw"),
                               NOW + 30)
        assert later is not None and later.connections == 0


def test_forged_heartbeat_does_not_block_later_ones() -> None:
    r = inst(connections=1, gateway_connections={"gw": 1}, gateway_heartbeats={"gw": NOW - 5})
    assert apply_activity(r, Activity(app="echo", id=r.id, at=1e18, connections=5, gateway="gw"), NOW) is None
    after = apply_activity(r, Activity(app="echo", id=r.id, at=NOW, connections=0, gateway="gw"), NOW)
    assert after is not None and after.connections == 0 and after.disconnected_at == NOW


def test_old_records_without_per_gateway_times_still_decode_and_order() -> None:
    old = b'{"id":"%s","app":"echo","state":"claimed","created_at":1.0,"heartbeat_at":5.0}' % (b"a" * 26)
    r = msgspec.json.decode(old, type=Instance)
    assert r.gateway_heartbeats == {} and r.browser == ""
    assert apply_activity(r, Activity(app="echo", id=r.id, at=4.0, gateway="gw"), NOW) is None
    assert apply_activity(r, Activity(app="echo", id=r.id, at=6.0, gateway="gw"), NOW) is not None


def test_live_sessions_of_one_browser() -> None:
    records = [
        inst(id="a" * 26, browser="b1", claimed_at=NOW - 10),
        inst(id="b" * 26, browser="b1", claimed_at=NOW - 20),
        inst(id="c" * 26, browser="b2"),
        inst("retiring", id="d" * 26, browser="b1"),
        inst("ready", id="e" * 26),
        inst(id="f" * 26, browser=""),
    ]
    assert [r.id for r in live_sessions(records, "b1")] == ["b" * 26, "a" * 26]
    assert live_sessions(records, "") == []  # no cookie: nothing to count
