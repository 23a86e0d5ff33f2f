"""Decisions of keeper, prober and lifecycle with a fake swarm port and an injected clock: no
Docker, no NATS, no sleeps."""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest

from swarmpool.bus.messages import DockerEvent, EventKind, Instance, Period, PoolOverride
from swarmpool.bus.wire import log_safe
from swarmpool.bus.spec import AppSpec, Duration, Pool, Probe, Settings, dec_hook
from swarmpool.bus.subjects import Subjects
from swarmpool.functions.docker_events import death_reason
from swarmpool.functions.lifecycle import failed, instance_spec, retiring
from swarmpool.functions.policy import plan_top_up
from swarmpool.functions.prober import Verdict, check
from swarmpool.ids import new_instance_id
from swarmpool.swarm.model import EngineEvent, InstanceSpec, ServiceInfo, TaskStatus
from swarmpool.swarm.port import SwarmPort
from swarmpool.swarm.services import INSTANCE_UID, run_as

NOW = 50_000.0
SPEC = AppSpec(name="echo", image="echo", port=8888, probe=Probe(path="healthz", log_marker="echo ready",
                                                                  timeout=Duration(60)),
               pool=Pool(size=3, max=6, max_parallel_starts=2))


def inst(state: str, **kw: object) -> Instance:
    base: dict[str, object] = dict(id=new_instance_id(), app="echo", state=state, created_at=NOW - 100,
                                   service_id="svc", ready_at=NOW - 50 if state == "ready" else None)
    base.update(kw)
    return msgspec.convert(base, Instance)


class FakeSwarm:
    """The swarm port, scripted: a task state, an HTTP answer and a log, and what was asked."""

    def __init__(self, *, state: str = "running", endpoint: str = "127.0.0.1:31000", http: bool = True,
                 log: str = "echo ready", exit_code: int | None = None) -> None:
        self.task = TaskStatus(state=state, endpoint=endpoint if state == "running" else "", exit_code=exit_code)
        self.http = http
        self.log = log
        self.probed: list[tuple[str, str]] = []

    async def create(self, spec: InstanceSpec) -> str:
        return "svc-" + spec.id

    def image_id(self, image: str) -> str:
        return "sha256:" + image

    async def resolve_image(self, image: str) -> str:
        return "sha256:" + image

    async def image_accounts(self, image: str) -> tuple[str, str, str] | None:
        return None

    async def network_info(self, name: str) -> dict[str, object] | None:
        return None

    async def remove(self, service_id: str) -> bool:
        return True

    async def status(self, service_id: str) -> TaskStatus:
        return self.task

    async def list_ours(self, app: str | None = None) -> list[ServiceInfo]:
        return []

    async def task_states(self) -> dict[str, TaskStatus]:
        return {}

    async def nodes(self) -> dict[str, str]:
        return {}

    async def node_cores(self) -> dict[str, int]:
        return {}

    async def logs_contain(self, service_id: str, marker: str) -> bool:
        return marker in self.log

    async def probe_http(self, endpoint: str, path: str) -> bool:
        self.probed.append((endpoint, path))
        return self.http

    async def events(self, since: float | None = None) -> AsyncIterator[EngineEvent]:
        return
        yield


def test_the_fake_is_a_swarm_port() -> None:
    port: SwarmPort = FakeSwarm()  # mypy checks the fake against the Protocol
    assert port is not None


# ---- keeper: one top-up ----


@pytest.mark.parametrize("states, override, total, failures, hold_until, starts, surplus, holds", [
    ([], PoolOverride(app="echo"), 0, 0, 0.0, 2, 0, False),  # bounded by parallel starts (2 of 3)
    (["starting"], PoolOverride(app="echo"), 1, 0, 0.0, 1, 0, False),  # one already starting
    (["ready"] * 3, PoolOverride(app="echo"), 3, 0, 0.0, 0, 0, False),  # full
    (["ready"] * 5, PoolOverride(app="echo", size=2), 5, 0, 0.0, 0, 3, False),  # scaled down: 3 surplus
    (["ready"] * 5, PoolOverride(app="echo", paused=True), 5, 0, 0.0, 0, 0, False),  # paused keeps its pool
    (["claimed"] * 6, PoolOverride(app="echo"), 6, 0, 0.0, 0, 0, False),  # at the app's max
    ([], PoolOverride(app="echo"), 199, 0, 0.0, 1, 0, False),  # global capacity: 1 left of 200
    ([], PoolOverride(app="echo"), 0, 5, 0.0, 2, 0, True),  # repeated failures: start, then hold
    ([], PoolOverride(app="echo"), 0, 5, NOW + 10, 0, 0, False),  # still held: no start
])
def test_plan_top_up(states: list[str], override: PoolOverride, total: int, failures: int, hold_until: float,
                     starts: int, surplus: int, holds: bool) -> None:
    plan = plan_top_up(spec=SPEC, override=override, records=[inst(s) for s in states], total=total,
                       max_instances=200, failures=failures, hold_until=hold_until, now=NOW)
    assert (plan.starts, len(plan.surplus), plan.hold_until is not None) == (starts, surplus, holds)
    if holds:
        assert plan.hold_until is not None and plan.hold_until > NOW


def test_surplus_retires_the_most_recently_ready_first() -> None:
    old, new = inst("ready", ready_at=NOW - 500), inst("ready", ready_at=NOW - 5)
    plan = plan_top_up(spec=SPEC, override=PoolOverride(app="echo", size=1), records=[new, old], total=2,
                       max_instances=200, failures=0, hold_until=0.0, now=NOW)
    assert plan.surplus == [new]


# ---- lifecycle: transitions and what Docker runs ----


@pytest.mark.parametrize("state, after", [
    ("starting", "failed"), ("ready", "failed"), ("claimed", "retiring"), ("failed", None), ("retiring", None),
])
def test_a_failure_fails_warm_instances_and_ends_claimed_sessions(state: str, after: str | None) -> None:
    result = failed(inst(state), "container exited with 1", NOW)
    assert (result.state if result else None) == after
    if result is not None:
        assert result.reason == "container exited with 1"
        assert (result.retiring_at == NOW) == (after == "retiring")


@pytest.mark.parametrize("state", ["starting", "ready", "claimed", "failed"])
def test_retiring_marks_every_live_state_once(state: str) -> None:
    result = retiring(inst(state), "idle 700 s > 600 s", NOW)
    assert result is not None and result.state == "retiring" and result.retiring_at == NOW
    assert retiring(result, "again", NOW + 1) is None


def test_instance_spec_puts_the_prefix_where_the_app_reads_it() -> None:
    spec = msgspec.structs.replace(SPEC, command=["serve", "--base={prefix}"], prefix_env="BASE_URL",
                                   env={"A": "1"})
    instance_id = new_instance_id()
    run = instance_spec(spec, instance_id, Settings(publish_ports=False, network="notebooks"))
    prefix = f"/i/{instance_id}/"
    assert run.command == ["serve", f"--base={prefix}"]
    assert run.env == {"A": "1", "SWARMPOOL_PREFIX": prefix, "BASE_URL": prefix}
    assert (run.publish, run.network, run.port) == (False, "notebooks", 8888)


def test_instance_spec_is_limited_and_unprivileged_by_default() -> None:
    run = instance_spec(SPEC, new_instance_id(), Settings())
    assert (run.cpus, run.memory, run.pids, run.user, run.cap_add) == (1.0, 1024**3, 512, None, [])
    spec = msgspec.convert({"name": "echo", "image": "echo", "port": 8888, "user": "1234:1234",
                            "cap_add": ["NET_BIND_SERVICE"], "limits": {"pids": 64, "memory": "256m"}}, AppSpec,
                           dec_hook=dec_hook)
    run = instance_spec(spec, new_instance_id(), Settings())
    assert (run.memory, run.pids, run.user, run.cap_add) == (256 * 1024**2, 64, "1234:1234", ["NET_BIND_SERVICE"])
    assert not run.trusted_user


def test_instance_spec_says_whether_the_app_trusts_its_user() -> None:
    """The adapter refuses a root user (by name, in the image) unless the app trusts it."""
    spec = msgspec.structs.replace(SPEC, user="toor", trusted=["user"])
    assert instance_spec(spec, new_instance_id(), Settings()).trusted_user
    assert not instance_spec(msgspec.structs.replace(spec, trusted=[]), new_instance_id(), Settings()).trusted_user


@pytest.mark.parametrize("image_user, wanted, result", [
    ("", None, (INSTANCE_UID, True)),
    ("root", None, (INSTANCE_UID, True)),
    ("0:0", None, (INSTANCE_UID, True)),
    ("00", None, (INSTANCE_UID, True)),  # the engine reads any number equal to 0 as root
    ("0000:0", None, (INSTANCE_UID, True)),
    ("+0", None, (INSTANCE_UID, True)),
    ("app", None, ("app", False)),
    ("1000:1000", None, ("1000:1000", False)),
    ("", "0", ("0", False)),  # the catalogue's word is final
])
def test_run_as_never_defaults_to_root(image_user: str, wanted: str | None, result: tuple[str, bool]) -> None:
    assert run_as(image_user, wanted) == result


# ---- prober: one probe ----


@pytest.mark.parametrize("swarm, result", [
    (FakeSwarm(state="pending"), "wait"),
    (FakeSwarm(state="running", endpoint=""), "wait"),
    (FakeSwarm(http=False), "wait"),
    (FakeSwarm(log="starting kernel"), "wait"),
    (FakeSwarm(), "ready"),
    (FakeSwarm(state="failed", exit_code=3), "dead"),
    (FakeSwarm(state="missing"), "dead"),
])
async def test_probe_verdicts(swarm: FakeSwarm, result: str) -> None:
    verdict = await check(swarm, SPEC, inst("starting"))
    assert verdict.result == result


async def test_probe_asks_under_the_prefix_and_reports_the_endpoint() -> None:
    swarm = FakeSwarm()
    record = inst("starting")
    assert await check(swarm, SPEC, record) == Verdict("ready", "", "127.0.0.1:31000")
    assert swarm.probed == [("127.0.0.1:31000", f"/i/{record.id}/healthz")]
    stripped = msgspec.structs.replace(SPEC, strip_prefix=True)
    await check(swarm, stripped, record)
    assert swarm.probed[-1] == ("127.0.0.1:31000", "/healthz")


async def test_a_dead_task_says_why() -> None:
    verdict = await check(FakeSwarm(state="failed", exit_code=137), SPEC, inst("starting"))
    assert verdict.result == "dead" and "exit 137" in verdict.detail


# ---- docker events, subjects, logs ----


@pytest.mark.parametrize("action, code, reason", [
    ("oom", None, "out of memory"), ("die", 1, "container exited with 1"), ("kill", None, "container kill"),
])
def test_death_reasons(action: str, code: int | None, reason: str) -> None:
    assert death_reason(DockerEvent(type="container", action=action, at=NOW, exit_code=code)) == reason


def test_a_mistyped_tick_period_is_an_error_not_a_dead_subscription() -> None:
    s = Subjects("t")
    assert s.tick(Period.RECONCILE) == "t.tick.reconcile"
    with pytest.raises(ValueError):
        s.tick("reconcil")  # type: ignore[arg-type]


def test_event_kinds_are_strings_on_the_wire() -> None:
    assert msgspec.json.encode({"event": EventKind.READY}) == b'{"event":"ready"}'
    with pytest.raises(ValueError):
        EventKind("readdy")


def test_logs_never_show_a_whole_id() -> None:
    instance_id = new_instance_id()
    shown = log_safe(f"sp.activity.echo.{instance_id}")
    assert instance_id not in shown and shown.startswith(f"sp.activity.echo.{instance_id[:4]}")
