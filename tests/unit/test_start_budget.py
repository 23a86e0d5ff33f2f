"""The engine's start budget (functions/policy.py start_budget): a pure function of the records and `now`."""

from __future__ import annotations

import msgspec

from swarmpool.bus.messages import Instance
from swarmpool.functions.policy import budgeted_starts, engine_starts, node_pace, start_budget
from swarmpool.ids import new_instance_id

NOW = 90_000.0
CORES = 2
KW = dict(cores=CORES, ceiling=32, tolerance=2.0, settle_cap=10.0)


def inst(state: str, created: float, ready: float | None = None, *, app: str = "echo", node: str = "n1",
         **kw: object) -> Instance:
    base: dict[str, object] = dict(id=new_instance_id(), app=app, state=state, created_at=created,
                                   ready_at=ready, node=node)
    base.update(kw)
    return msgspec.convert(base, Instance)


def batch(at: float, n: int, seconds: float, **kw: object) -> list[Instance]:
    """n starts reserved together at `at`, all ready `seconds` later."""
    return [inst("ready", at, at + seconds, **kw) for _ in range(n)]


def test_nothing_learned_yet_starts_as_many_as_the_cores() -> None:
    assert start_budget([], NOW, **KW).size == CORES
    assert start_budget([inst("starting", NOW - 1, node="")], NOW, **KW).size == CORES


def test_the_budget_widens_when_starts_are_quick_and_nothing_is_settling() -> None:
    # four started at once and each took as long as the fastest echo start: the engine idled, so 4 x 4
    records = batch(NOW - 10, 4, 1.0)
    budget = start_budget(records, NOW, **KW)
    assert budget.size == 16 and "quick" in budget.why
    # twelve at once took longer (2.6 s, the fastest 1 s plus 0.5 s of slack: 1.7x), within the tolerance: 2 x 12
    records += batch(NOW - 5, 12, 2.6)
    assert start_budget(records, NOW, **KW).size == 24


def test_the_budget_narrows_when_starts_slow_down_but_keeps_the_cores_while_a_pool_is_short() -> None:
    records = batch(NOW - 60, 1, 1.0) + batch(NOW - 20, 16, 9.0)  # 16 at once took 9 s, the fastest 1 s
    assert node_pace(records, NOW, cores=CORES, ceiling=32, tolerance=2.0)[0] == 5  # 16 * 2 / (9 / 1.5)
    assert start_budget(records, NOW, **KW).size == 5
    # so slow that the pace alone would stop the engine: a short pool still gets the cores
    records = batch(NOW - 60, 1, 1.0) + batch(NOW - 30, 4, 20.0)
    assert node_pace(records, NOW, cores=CORES, ceiling=32, tolerance=2.0)[0] == 1
    assert start_budget(records, NOW, **KW, short=True).size == CORES
    assert start_budget(records, NOW, **KW, short=False).size == 1


def test_the_budget_narrows_while_pages_settle() -> None:
    quick = batch(NOW - 10, 4, 1.0)
    assert start_budget(quick, NOW, **KW).size == 16
    one = [inst("claimed", NOW - 900, NOW - 899, claimed_at=NOW - 1)]  # a student's page still loading
    narrowed = start_budget(quick + one, NOW, **KW)
    assert narrowed.size == CORES - 1 and "settling" in narrowed.why
    many = [inst("claimed", NOW - 900, NOW - 899, claimed_at=NOW - 2) for _ in range(5)]
    assert start_budget(quick + many, NOW, **KW).size == 1  # never none: a start still goes on
    # a page slower than settle_cap (a busy machine) still narrows it: its replacement starts, no others
    slow_page = [inst("claimed", NOW - 900, NOW - 899, claimed_at=NOW - 25)]
    assert start_budget(quick + slow_page, NOW, **KW).size == CORES - 1
    # once the page has loaded (or three settle_caps have passed: it never will), the budget is back
    settled = [msgspec.structs.replace(r, settled_at=NOW - 0.5) for r in many]
    assert start_budget(quick + settled, NOW, **KW).size == 16
    stale = [inst("claimed", NOW - 900, NOW - 899, claimed_at=NOW - 31)]
    assert start_budget(quick + stale, NOW, **KW).size == 16


def test_each_node_follows_its_own_starts_and_the_budgets_add_up() -> None:
    fast = batch(NOW - 10, 4, 1.0, node="a")  # node a: quick
    slow = batch(NOW - 60, 1, 1.0, node="b") + batch(NOW - 30, 8, 12.0, node="b")  # node b: loaded
    budget = start_budget(fast + slow, NOW, **KW)
    assert budget.size == 16 + CORES, budget.why
    # a page settling on node b narrows b only
    page = [inst("claimed", NOW - 50, NOW - 45, node="b", claimed_at=NOW - 1)]
    assert start_budget(fast + slow + page, NOW, **KW).size == 16 + CORES - 1


def test_starts_are_judged_against_their_own_apps_fastest() -> None:
    # a Voila start of 8 s is quick for Voila (its fastest is 6 s); an echo start of 8 s would not be
    voila = batch(NOW - 30, 2, 6.0, app="voila") + batch(NOW - 15, 2, 8.0, app="voila")
    assert start_budget(voila, NOW, **KW).size == 8
    echo = batch(NOW - 30, 1, 1.0) + batch(NOW - 15, 3, 8.0)
    assert start_budget(echo, NOW, **KW, short=False).size < 3


def test_old_starts_say_nothing_and_the_ceiling_holds() -> None:
    old = batch(NOW - 3600, 4, 1.0)
    assert start_budget(old, NOW, **KW).size == CORES
    quick = batch(NOW - 10, 30, 1.0)
    assert start_budget(quick, NOW, **KW).size == 32


def test_a_fixed_start_budget_is_used_as_configured() -> None:
    assert start_budget(batch(NOW - 10, 4, 1.0), NOW, **KW, fixed=3).size == 3


def test_budgeted_starts_count_every_app_starting() -> None:
    assert budgeted_starts(wanted=10, deferred=2, budget=8, starting=3) == 5
    assert budgeted_starts(wanted=10, deferred=0, budget=8, starting=9) == 0


def test_starts_near_their_probe_timeout_narrow_the_budget_whatever_the_fastest() -> None:
    # all started at once and all took 50 s: as quick as the fastest, yet 50 s of a 60 s probe timeout
    records = batch(NOW - 100, 1, 50.0) + batch(NOW - 55, 8, 50.0)
    assert start_budget(records, NOW, **KW, short=False).size == 32  # (8 at once, ceiling)
    narrowed = start_budget(records, NOW, **KW, short=False, timeouts={"echo": 60.0})
    assert narrowed.size < 8 and "slow" in narrowed.why


def test_a_narrowing_budget_follows_the_load_the_slow_starts_ran_under_not_what_is_left_when_they_end() -> None:
    # 32 reserved at once; the engine finished them one by one from 10 s to 40 s (the fastest start: 4 s). The
    # last ones ran most of their life beside many others: counting only what was left at their end (a few)
    # would shrink the budget to one and idle the engine; what they ran beside says it bears about 8
    fastest = batch(NOW - 100, 1, 4.0)
    staggered = [inst("ready", NOW - 41, NOW - 31 + k) for k in range(32)]
    budget = start_budget(fastest + staggered, NOW, **{**KW, "tolerance": 4.0}, short=False)
    assert "slow" in budget.why and 4 <= budget.size <= 12, budget.why


def test_quick_starts_widen_no_further_than_half_their_probe_timeout_would_bear() -> None:
    # a busy machine: two Voila starts at once took 45 s each (the probe timeout: 120 s). Quick for each
    # other, yet four times as many would take them to the timeout: the budget stays at what keeps 60 s
    voila = batch(NOW - 50, 2, 45.0, app="voila")
    assert start_budget(voila, NOW, **KW, short=False).size == 8
    capped = start_budget(voila, NOW, **KW, short=False, timeouts={"voila": 120.0})
    assert capped.size == 2 and "half the probe timeout" in capped.why
    echo = batch(NOW - 10, 2, 2.0)  # light starts are far from theirs: they widen as before
    assert start_budget(echo, NOW, **KW, timeouts={"echo": 60.0}).size == 8


# -- a cluster: each node by its own engine's task timestamps and its own cores (issue 17, "per node") --------------

def test_a_node_is_sized_by_its_own_cores_from_the_swarms_nodes_listing() -> None:
    # a worker with 8 cores and a manager the listing does not size: nothing learned yet, each its cores
    starting = [inst("starting", NOW - 1, node="w1"), inst("starting", NOW - 1, node="m1")]
    budget = start_budget(starting, NOW, **KW, node_cores={"w1": 8})
    assert budget.size == 8 + CORES, budget.why
    # slow starts on the worker: a short pool still keeps its 8 cores busy, not this host's 2
    slow = batch(NOW - 60, 1, 1.0, node="w1") + batch(NOW - 30, 4, 20.0, node="w1")
    assert start_budget(slow, NOW, **KW, node_cores={"w1": 8}, short=True).size == 8
    # a page settling on the worker takes one of its own cores, not one of this host's
    page = inst("claimed", NOW - 900, NOW - 899, node="w1", claimed_at=NOW - 1)
    assert start_budget(batch(NOW - 10, 4, 1.0, node="w1") + [page], NOW, **KW, node_cores={"w1": 8}).size == 7


def test_a_workers_pace_is_its_engines_task_timestamps_not_when_a_busy_host_probed_it() -> None:
    # the worker's engine ran every task within 0.4-0.5 s of creating it; the manager's functions host was busy and
    # its probes passed 12 s after the reservations (the fastest of them in 1 s): the worker had room
    records = (batch(NOW - 60, 1, 1.0, node="w1", task_start=0.4)
               + batch(NOW - 20, 8, 12.0, node="w1", task_start=0.5))
    budget = start_budget(records, NOW, **KW)
    assert budget.size == 32 and "quick" in budget.why, budget.why  # 4 x 8, the ceiling
    # the same records without the engine's timestamps: the host's clock says slow, the budget narrows
    untimed = [msgspec.structs.replace(r, task_start=None) for r in records]
    assert start_budget(untimed, NOW, **KW).size == CORES


def test_a_worker_whose_engine_slows_down_narrows() -> None:
    # the app's fastest start took 1 s, 0.4 s of it the engine's; now the engine takes 40 s to run each of 8 tasks
    # started together: 5 s per start in flight, 4.6 s more than its fastest on a 1 s start, beyond the tolerance
    # (2x here), so the budget narrows
    records = (batch(NOW - 60, 1, 1.0, node="w1", task_start=0.4)
               + batch(NOW - 50, 8, 41.0, node="w1", task_start=40.0))
    budget = start_budget(records, NOW, **KW, short=False)
    assert budget.size == 4 and "slow" in budget.why, budget.why  # 8 x 2 / ((1 + 4.6) / 1.5)


def test_an_engine_queue_that_gets_through_its_starts_as_fast_as_ever_keeps_widening() -> None:
    # two starts took 2 s of the engine's each (2.8 s in all); then 32 at once took 30 s each: the engine's queue was
    # longer, not slower (0.94 s per start in flight against 1 s), so more at once fill the pool sooner
    records = (batch(NOW - 100, 2, 2.8, task_start=2.0)
               + batch(NOW - 40, 32, 31.0, task_start=30.0))
    budget = start_budget(records, NOW, **{**KW, "ceiling": 64, "tolerance": 4.0}, short=False)
    assert budget.size == 64 and "quick" in budget.why, budget.why  # 4 x 32, the ceiling


def test_the_latest_timed_starts_speak_before_the_untimed_ones() -> None:
    # eight starts timed by reconcile, quick; eight newer ones, ready just now and not timed yet, took 30 s from
    # their reservations because 40 were in flight: the engine's timestamps judge, not the probes' clock
    records = (batch(NOW - 100, 8, 2.8, task_start=2.0)
               + batch(NOW - 31, 8, 30.0)
               + [inst("starting", NOW - 31) for _ in range(32)])
    budget = start_budget(records, NOW, **{**KW, "ceiling": 64, "tolerance": 4.0}, short=False)
    assert budget.size == 64 and "quick" in budget.why, budget.why


def test_quick_starts_widen_on_what_is_starting_now_when_more_than_ran_beside_them() -> None:
    # two quick starts ran alone; eight more started since: the next step is 4 x 8, not 4 x 2 again
    records = batch(NOW - 10, 2, 1.0) + [inst("starting", NOW - 5) for _ in range(8)]
    budget = start_budget(records, NOW, **KW, short=False)
    assert budget.size == 32 and "8 at once" in budget.why, budget.why


def test_an_engine_part_slower_than_its_fastest_is_judged_on_the_whole_start() -> None:
    # the engine's part went from 0.3 to 1.5 s (5x) on starts of 4 s: the students wait 1.2 s more on 4, quick
    records = (batch(NOW - 60, 1, 4.0, node="w1", task_start=0.3)
               + batch(NOW - 20, 8, 5.2, node="w1", task_start=1.5))
    budget = start_budget(records, NOW, **KW, short=False)
    assert budget.size == 32 and "quick" in budget.why, budget.why


def test_reconcile_records_the_engines_start_time_once_per_running_task() -> None:
    fresh = inst("starting", NOW - 5, service_id="s1")
    known = inst("ready", NOW - 50, NOW - 40, service_id="s2", task_start=0.7)
    pending = inst("starting", NOW - 1, service_id="s3")
    gone = inst("retiring", NOW - 90, NOW - 80, service_id="s4")
    tasks = {"s1": (NOW - 4.0, NOW - 3.25), "s2": (NOW - 49.0, NOW - 48.0), "s3": (NOW - 1.0, None),
             "s4": (NOW - 89.0, NOW - 88.0)}
    assert engine_starts([fresh, known, pending, gone], tasks) == {fresh.key: 0.75}
