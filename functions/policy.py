"""Pure decisions of the pool: functions of records, the app spec and `now`. No I/O here."""

from __future__ import annotations

import hashlib
import json
import statistics
from collections import Counter
from datetime import datetime, timezone as dt_timezone
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import msgspec

from swarmpool.bus.messages import Activity, Instance, PoolOverride
from swarmpool.bus.spec import AppSpec, Session
from swarmpool.functions import schedule
from swarmpool.swarm.model import ENGINE_FAULT  # in a reason when the engine failed the start, not the app
from swarmpool.swarm.tasks import ENDED_TASK_STATES


def counts(records: Iterable[Instance]) -> Counter[str]:
    """How many instances are in each state."""
    return Counter(r.state for r in records)


class Target(NamedTuple):
    """Ready instances to keep for an app, and which rule set that number (status shows it)."""

    size: int
    # "catalogue", "schedule <days start-end>", "schedule <calendar event's summary>", "scale",
    # "scale until <time>", "paused"
    source: str


def target(spec: AppSpec | None, override: PoolOverride, now: float, timezone: str | None = None) -> Target:
    """The operator's pause, else an unexpired `admin scale`, else the largest of the catalogue's
    pool size, the schedule entries and the calendar events active at `now` (`timezone`: the settings'
    default zone). A calendar is validated when the catalogue is loaded, so it expands here."""
    if spec is None:
        return Target(0, "not in the catalogue")
    if override.paused:
        return Target(0, "paused")
    if override.size is not None and (override.until is None or now < override.until):
        if override.until is None:
            return Target(override.size, "scale")
        until = datetime.fromtimestamp(override.until, dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return Target(override.size, f"scale until {until}")
    best = Target(spec.pool.size, "catalogue")
    for entry in schedule.active(spec.schedule, timezone, now):
        if entry.size > best.size:
            best = Target(entry.size, f"schedule {entry.label}")
    for source in spec.calendar:
        for lecture in schedule.calendar_active(source, timezone, now):
            if lecture.size > best.size:
                best = Target(lecture.size, f"schedule {lecture.label}")
    return best


def starts_needed(*, records: list[Instance], target: int, limit: int, max_parallel: int | None,
                  global_free: int) -> int:
    """How many new instances to start now so that ready + starting reaches `target`.

    Bounded by the app's max (ready + starting + claimed), by parallel starts, and by
    the global capacity left across all apps.
    """
    c = counts(records)
    warm = c["ready"] + c["starting"]
    alive = warm + c["claimed"]
    want = target - warm
    parallel = want if max_parallel is None else max_parallel - c["starting"]
    return max(0, min(want, limit - alive, parallel, global_free))


def surplus_ready(records: list[Instance], target: int) -> list[Instance]:
    """Ready instances beyond the target (after a scale-down): the most recently ready go first."""
    ready = sorted((r for r in records if r.state == "ready"), key=lambda r: r.ready_at or r.created_at)
    return ready[target:] if len(ready) > target else []


class TopUpPlan(NamedTuple):
    """What one top-up of an app does now."""

    target: int
    starts: int  # new instances to reserve and start
    surplus: list[Instance]  # ready instances beyond the target, to retire
    hold_until: float | None  # set: no starts before then (backoff after repeated failures)


def plan_top_up(*, spec: AppSpec, override: PoolOverride, records: list[Instance], total: int,
                max_instances: int, failures: int, hold_until: float, now: float,
                timezone: str | None = None) -> TopUpPlan:
    """One top-up of an app, decided from its records (`total`: records of every app)."""
    want = target(spec, override, now, timezone).size
    # paused keeps its warm pool (drain retires it); otherwise scale down to the target
    surplus = [] if override.paused else surplus_ready(records, want)
    if now < hold_until:
        return TopUpPlan(want, 0, surplus, None)
    n = starts_needed(records=records, target=want, limit=max(spec.pool.limit, want),
                      max_parallel=spec.pool.max_parallel_starts, global_free=max_instances - total)
    delay = backoff_delay(failures)
    return TopUpPlan(want, n, surplus, now + delay if n and delay else None)


def backoff_delay(consecutive_failures: int) -> float:
    """Seconds to wait before starting again after repeated failures (0 for the first few)."""
    if consecutive_failures < 3:
        return 0.0
    return float(min(60, 2 ** (consecutive_failures - 2)))


def spec_version(spec: AppSpec) -> str:
    """A digest of what an instance of `spec` runs: a reload that changes it recycles the warm ones."""
    what = [spec.image, spec.command, sorted(spec.env.items()), spec.prefix_env, spec.port, spec.user,
            sorted(spec.cap_add), spec.strip_prefix]
    if spec.egress != "none":  # only then: digests of apps that keep the default stay what they were
        what.append(spec.egress)
    return hashlib.sha256(json.dumps(what).encode()).hexdigest()[:12]


RECYCLE_BATCH = 2  # outdated ready instances retired per top-up, at most


def outdated(r: Instance, version: str, image_id: str) -> bool:
    """Whether a record runs another spec than the catalogue's, or another image behind the same
    name (records from before versions were kept, or not yet knowing their image, are current), or
    its service is named after its id (an older version's: its neighbours can read the id in DNS)."""
    return (bool(r.spec and r.spec != version) or bool(image_id and r.image and r.image != image_id)
            or not r.handle)


def plan_recycle(records: list[Instance], version: str, image_id: str, target: int,
                 batch: int = RECYCLE_BATCH) -> tuple[list[Instance], list[Instance]]:
    """(outdated warm instances, those to retire now). Starting ones go at once, and ready ones named after
    their id (never handed out: see pick_claim_order); other ready ones only while current ready ones keep the
    pool at `target`, `batch` at a time. Claimed ones never (an old-named session runs to its end, or until an
    admin retires it)."""
    old = [r for r in records if r.state in ("ready", "starting") and outdated(r, version, image_id)]
    at_once = [r for r in old if r.state == "starting" or not r.handle]
    old_ready = sorted((r for r in old if r.state == "ready" and r.handle),
                       key=lambda r: (r.ready_at or r.created_at, r.id))
    current_ready = sum(r.state == "ready" and bool(r.handle) for r in records) - len(old_ready)
    room = max(0, current_ready + len(old_ready) - target)
    return old, at_once + old_ready[:min(batch, room)]


def retire_reason(r: Instance, spec: AppSpec | None, now: float) -> str | None:
    """Why this instance should be retired now, or None. The reason is logged as is."""
    if spec is None:  # removed by a reload: the warm pool drains, sessions end by the default rules
        if r.state in ("ready", "starting", "failed"):
            return "app no longer in the catalogue"
        return _session_over(r, Session(), now) if r.state == "claimed" else None
    if r.state == "failed":
        return r.reason or "failed"
    if r.state == "starting":
        age = now - r.created_at
        if age > spec.probe.timeout:
            return f"not ready after {age:.0f} s > {spec.probe.timeout:.0f} s"
        return None
    if r.state == "ready":
        warm = spec.pool.max_warm_age
        if warm is not None and r.ready_at is not None and now - r.ready_at > warm:
            return f"recycled: warm {now - r.ready_at:.0f} s > {warm:.0f} s"
        return None
    if r.state != "claimed":
        return None
    return _session_over(r, spec.session, now)


def _session_over(r: Instance, s: Session, now: float) -> str | None:
    """Why a claimed instance's session is over by the rules `s`, or None."""
    claimed_at = r.claimed_at if r.claimed_at is not None else r.created_at
    if s.max_lifetime is not None and now - claimed_at > s.max_lifetime:
        return f"max lifetime {now - claimed_at:.0f} s > {s.max_lifetime:.0f} s"
    if s.unused_grace is not None and not r.used and r.connections == 0 and now - claimed_at > s.unused_grace:
        return f"unused {now - claimed_at:.0f} s > {s.unused_grace:.0f} s"  # a bot or a script's claim
    last = max(claimed_at, r.last_activity or 0.0)
    if s.idle_timeout is not None and now - last > s.idle_timeout:
        return f"idle {now - last:.0f} s > {s.idle_timeout:.0f} s"
    if s.disconnect_grace is not None and r.connections == 0:
        since = max(claimed_at, r.disconnected_at or 0.0, r.last_activity or 0.0)
        if now - since > s.disconnect_grace:
            return f"disconnected {now - since:.0f} s > {s.disconnect_grace:.0f} s"
    return None


MAX_CLOCK_SKEW = 30.0  # seconds a heartbeat's time may run ahead of the functions' clock


def apply_activity(r: Instance, hb: Activity, now: float, max_skew: float = MAX_CLOCK_SKEW) -> Instance | None:
    """The record after one gateway heartbeat, or None when nothing changes (stale or refused).

    Heartbeats are ordered per gateway (each gateway's own clock); one from the future (beyond
    `max_skew` of `now`) is refused, so a forged `at` cannot freeze a record.
    """
    if r.state != "claimed" or not hb.at <= now + max_skew:  # `not <=` also refuses NaN
        return None
    # records from before per-gateway times: the newest heartbeat of any gateway orders them all
    previous = r.gateway_heartbeats.get(hb.gateway, None if r.gateway_heartbeats else r.heartbeat_at)
    if previous is not None and hb.at < previous:
        return None  # an older heartbeat of this gateway processed late
    at = min(hb.at, now)  # a gateway's clock slightly ahead never dates anything in the future
    last = max(r.last_activity or 0.0, at) if hb.traffic else r.last_activity
    per_gateway = {**r.gateway_connections, hb.gateway: hb.connections}
    per_gateway = {g: n for g, n in per_gateway.items() if n > 0}
    connections = sum(per_gateway.values())
    disconnected_at = r.disconnected_at
    if connections == 0 and r.connections > 0:
        disconnected_at = at
    elif connections > 0:
        disconnected_at = None
    return msgspec.structs.replace(
        r, last_activity=last, connections=connections, gateway_connections=per_gateway,
        disconnected_at=disconnected_at, used=r.used or hb.traffic,
        heartbeat_at=max(r.heartbeat_at or 0.0, at),
        gateway_heartbeats={**r.gateway_heartbeats, hb.gateway: hb.at},
    )


def live_sessions(records: Iterable[Instance], browser: str) -> list[Instance]:
    """The claimed sessions one browser holds (its per-browser limit counts these), oldest first."""
    mine = [r for r in records if r.state == "claimed" and browser and r.browser == browser]
    return sorted(mine, key=lambda r: (r.claimed_at or r.created_at, r.id))


def claimable(r: Instance) -> bool:
    """Whether a claim may hand `r` out: ready, and its service not named after its id by an older version
    (its neighbours read the id, the session's capability, in DNS)."""
    return r.state == "ready" and bool(r.handle)


def pick_claim_order(records: Iterable[Instance], skip: set[str]) -> list[Instance]:
    """Claimable instances, oldest first (the longest-warm one goes out first), minus `skip`: the order
    `InstanceStore.oldest_ready` keeps without sorting (the claimer walks that index)."""
    ready = [r for r in records if claimable(r) and r.key not in skip]
    return sorted(ready, key=lambda r: (r.ready_at or r.created_at, r.id))


def leaked_services(service_keys: dict[str, float], record_keys: set[str], now: float,
                    grace: float) -> list[str]:
    """Services of ours with no record, older than `grace` (a record is always written first)."""
    return [k for k, created in service_keys.items() if k not in record_keys and now - created > grace]


def ghost_records(records: Iterable[Instance], service_ids: set[str], now: float,
                  grace: float) -> list[Instance]:
    """Records whose service is gone (or never appeared within `grace`)."""
    ghosts = []
    for r in records:
        if r.state == "retiring":
            continue
        # young records may have a service created after the listing was taken
        if now - r.created_at > grace and (not r.service_id or r.service_id not in service_ids):
            ghosts.append(r)
    return ghosts


FOUND_DEAD = "(found by reconcile)"  # a running instance that died (with its engine, most often)


def engine_fault(reason: str) -> bool:
    """Whether a failure was the engine's (unreachable, not a manager yet, restarted under a start)."""
    return ENGINE_FAULT in reason


def failed_start(reason: str) -> bool:
    """Whether a failure counts towards the start backoff: not the engine's, not a running one's death."""
    return not engine_fault(reason) and FOUND_DEAD not in reason


def dead_instances(records: Iterable[Instance], task_states: Mapping[str, str]) -> list[tuple[Instance, str]]:
    """Records whose service's task no longer runs, by the engine's own listing (service id ->
    task state), each with the reason: a ready or claimed instance runs or is dead; a starting one
    is dead only once its task has ended (it may not run yet). Records whose service is not
    listed are ghost_records' business."""
    dead = []
    for r in records:
        state = task_states.get(r.service_id) if r.service_id else None
        if state is None or r.state not in ("starting", "ready", "claimed"):
            continue
        if state in ENDED_TASK_STATES or (r.state != "starting" and state != "running"):
            dead.append((r, f"container {state} {FOUND_DEAD}"))
    return dead


LIVE_NODE = "ready"  # a node in any other state (down, unknown, disconnected) or no longer listed is lost


def lost_node_instances(records: Iterable[Instance], task_nodes: Mapping[str, str],
                        nodes: Mapping[str, str]) -> list[tuple[Instance, str]]:
    """Records whose task is placed on a node the swarm no longer sees as ready (`task_nodes`: service
    id -> node id of its newest task; `nodes`: node id -> state), each with the reason. A task on a
    Down node keeps reporting `running`, so only the node tells: warm ones fail (and are replaced
    elsewhere), claimed ones end. A task not placed yet (no node) is not lost."""
    lost = []
    for r in records:
        node = task_nodes.get(r.service_id, "") if r.service_id else ""
        if not node or r.state not in ("starting", "ready", "claimed"):
            continue
        state = nodes.get(node, "gone")
        if state != LIVE_NODE:
            lost.append((r, f"node {node[:12]} {state} {FOUND_DEAD}"))
    return lost


def engine_starts(records: Iterable[Instance], tasks: Mapping[str, tuple[float, float | None]]) -> dict[str, float]:
    """Record key -> seconds its node's engine took from creating its task to running it, for live records that
    do not have it yet and whose task runs (`tasks`: service id -> the task's created and running times)."""
    found = {}
    for r in records:
        created, running = tasks.get(r.service_id, (0.0, None)) if r.service_id else (0.0, None)
        if r.task_start is None and created and running and r.state in ("starting", "ready", "claimed"):
            found[r.key] = max(0.0, running - created)
    return found


def placed_nodes(records: Iterable[Instance], task_nodes: Mapping[str, str]) -> dict[str, str]:
    """Record key -> node id for records whose task's node is known and not yet recorded."""
    return {r.key: task_nodes[r.service_id] for r in records
            if r.service_id and task_nodes.get(r.service_id) and r.node != task_nodes[r.service_id]
            and r.state in ("starting", "ready", "claimed")}


# ---- the engine's start budget: how many instances may start at once ----

START_WINDOW = 600.0  # starts that became ready longer ago than this say nothing about the engine now
START_SAMPLES = 8  # the most recent starts of a node that its budget follows
START_BASELINE = 4 * START_SAMPLES  # the latest timed starts of a node whose quickest is the engine's own pace
START_SLACK = 0.5  # seconds a start may take beyond its app's fastest and still be quick (probe granularity)
# a page still loading this many settle_caps after its claim narrows the budget (its replacement waits one cap only):
# on a busy machine a Voila page can take longer than the cap, and starts must not take its CPU then
SETTLING_SPAN = 3


class StartBudget(NamedTuple):
    """Instances that may be starting at once on the engine, all apps together, and why (logged)."""

    size: int
    why: str


def unsettled_claims(records: Iterable[Instance], now: float, cap: float) -> list[Instance]:
    """Claims whose student's page is still loading (at most `cap` s after the claim)."""
    return [r for r in records if r.state == "claimed" and r.settled_at is None
            and r.claimed_at is not None and now - r.claimed_at < cap]


def start_seconds(r: Instance) -> float:
    """How long an instance took from its reservation to its first passed probe."""
    return (r.ready_at or r.created_at) - r.created_at


def starts_alongside(r: Instance, records: Iterable[Instance], now: float) -> float:
    """How many starts were in flight, on average, while `r` started (itself included)."""
    begin, end = r.created_at, r.ready_at if r.ready_at is not None else now
    if end <= begin:
        return 1.0
    overlap = 0.0
    for o in records:
        until = o.ready_at if o.ready_at is not None else (now if o.state == "starting" else None)
        if until is not None:
            overlap += max(0.0, min(end, until) - max(begin, o.created_at))
    return max(1.0, overlap / (end - begin))


def node_pace(records: list[Instance], now: float, *, cores: int, ceiling: int, tolerance: float,
              timeouts: Mapping[str, float] | None = None) -> tuple[int, str]:
    """The budget the recent starts on one node ask for (`records`: that node's, and those not placed yet).

    Each of the node's latest starts (those its engine's task timestamps timed, created -> running, where reconcile
    recorded any; else by the records' times, reservation -> first passed probe, which a busy functions host's probe
    delays) is compared with the fastest start of its app seen there. A timed start is judged by the engine's time
    per start in flight beside it (against the quickest of the latest START_BASELINE timed starts): the engine is a queue whose every start takes longer the more it holds while it
    gets through them no slower, so only its time per start beyond its fastest (added to the app's fastest whole
    start) says it has no room. While they stay within `tolerance` times the fastest (plus START_SLACK), the engine
    had room, so the budget doubles what is in flight (what ran beside them, or what is starting now if more;
    quadruples while they stay within half the tolerance's margin, as when the engine idled); when they take
    longer, the engine (or the node's CPU) is the queue, so the budget shrinks to what would have kept them within
    the tolerance; so it does as well when they took more than half their app's probe timeout (`timeouts`),
    whatever the fastest was, and it never grows past what would take them there if each start grew slower in
    proportion to the starts beside it (more at once would fail them). Nothing recent: the cores."""
    recent = sorted((r for r in records if r.ready_at is not None and now - r.ready_at <= START_WINDOW),
                    key=lambda r: r.ready_at or 0.0)
    timed = [r for r in recent if r.task_start is not None]  # a start is timed a reconcile pass after it runs
    done = (timed or recent)[-START_SAMPLES:]
    if not done:
        return min(cores, ceiling), "no recent start"
    fastest: dict[str, float] = {}
    for r in records:
        if r.ready_at is not None:
            fastest[r.app] = min(fastest.get(r.app, float("inf")), start_seconds(r))
    baseline = timed[-START_BASELINE:]  # not every record's: each costs a pass over the records beside it
    since = min(r.created_at for r in baseline + done)
    beside = [o for o in records if (o.ready_at if o.ready_at is not None else now) > since]  # the others add 0
    fastest_task: dict[str, float] = {}  # the engine's fastest time per start in flight, of its latest timed starts
    for r in baseline:
        fastest_task[r.app] = min(fastest_task.get(r.app, float("inf")),
                                  (r.task_start or 0.0) / starts_alongside(r, beside, now))
    loads, ratios, caps = [], [], []
    for r in done:
        alongside = starts_alongside(r, beside, now)
        loads.append(round(alongside))
        limit = (timeouts or {}).get(r.app)
        if limit:  # more at once makes each start slower, at worst in proportion: keep them within half the timeout
            caps.append(loads[-1] * (limit / 2) / max(start_seconds(r), 0.001))
        if r.task_start is not None and r.app in fastest_task:
            # the engine's own timing on the node (no host's clock or probe in it), per start in flight: what it took
            # beyond its fastest is added to the app's fastest whole start, so a start is judged at the scale the
            # student waits on (an engine part of 0.4 s that takes 2 s is not a start five times slower)
            beyond = max(0.0, r.task_start / alongside - fastest_task[r.app])
            ratio = (fastest[r.app] + beyond) / (fastest[r.app] + START_SLACK)
        else:
            ratio = start_seconds(r) / (fastest[r.app] + START_SLACK)
        if limit and start_seconds(r) > limit / 2:  # too close to failing: counts as beyond the tolerance
            ratio = max(ratio, tolerance * start_seconds(r) / (limit / 2))
        ratios.append(ratio)
    slow = statistics.median(ratios)
    cap = max(1, min(ceiling, int(min(caps)))) if caps else ceiling
    if slow <= tolerance:  # as fast as the fastest: the engine was idling, so widen faster
        grow = 4 if slow <= (1 + tolerance) / 2 else 2
        flight = max(max(loads), sum(r.state == "starting" for r in records))
        size = min(cap, max(grow * flight, 2))
        return size, f"quick starts ({slow:.1f}x the fastest, {flight} at once)" + (
            "; half the probe timeout" if size == cap < ceiling else "")
    load = statistics.median(loads)
    return max(1, min(cap, int(load * tolerance / slow))), f"slow starts ({slow:.1f}x the fastest, {load:.0f} at once)"


def start_budget(records: list[Instance], now: float, *, cores: int, ceiling: int, tolerance: float,
                 settle_cap: float, short: bool = True, fixed: int = 0,
                 timeouts: Mapping[str, float] | None = None,
                 node_cores: Mapping[str, int] | None = None) -> StartBudget:
    """Instances that may be starting at once, all apps together (`fixed` > 0: that many, as configured).

    Per node (the swarm's node of each record; a start not placed yet counts on every node): what its recent
    starts ask for (node_pace), at least its cores while a pool is short (the engine stays busy), and while
    students' pages settle on it (claims unsettled for up to SETTLING_SPAN x `settle_cap`), fewer than its cores by one per page still loading (at least one):
    a page's first load comes before a new instance's start. The nodes' budgets add up. A node's cores are
    `node_cores`' (the swarm's nodes listing), else `cores` (this host's)."""
    if fixed:
        return StartBudget(fixed, "start_budget")
    placed = {r.node for r in records if r.node}
    nodes = sorted(placed) or [""]
    settling = unsettled_claims(records, now, SETTLING_SPAN * settle_cap)
    total, whys = 0, []
    for node in nodes:
        mine = [r for r in records if r.node in (node, "")]
        its = (node_cores or {}).get(node) or cores
        size, why = node_pace(mine, now, cores=its, ceiling=ceiling, tolerance=tolerance, timeouts=timeouts)
        if short and size < its:
            size, why = its, f"{why}; the cores while a pool is short"
        pages = sum(1 for r in settling if r.node in (node, ""))
        if pages:
            size, why = max(1, min(size, its) - pages), f"{why}; {pages} page(s) settling"
        total += size
        whys.append(f"{node[:12] or 'engine'}: {size} ({why})")
    return StartBudget(total, "; ".join(whys))


def budgeted_starts(wanted: int, deferred: int, budget: int, starting: int) -> int:
    """Starts now: the plan's, less the replacements of claims still loading, within the budget."""
    return max(0, min(wanted - deferred, budget - starting))
