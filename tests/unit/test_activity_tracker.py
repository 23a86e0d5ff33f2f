"""The gateway's activity tracker on a fake clock and a fake publisher: throttling, urgency, forgetting."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from swarmpool.bus.client import BusError
from swarmpool.bus.messages import Activity, Visit
from swarmpool.bus.subjects import Subjects
from swarmpool.gateway.activity import ActivityTracker
from swarmpool.gateway.visits import VisitLog, browser_tag, session_key

INTERVAL = 5.0
A = "a" * 26
B = "b" * 26
SUBJECTS = Subjects("sp")


class Clock:
    """Stands still until the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Published:
    """A fake publisher: keeps what it is given, or fails while `failing` is set."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, Activity]] = []
        self.failing = False
        self.arrived = asyncio.Event()

    async def __call__(self, subject: str, message: Any) -> None:
        if self.failing:
            raise BusError("nats is down")
        assert isinstance(message, Activity)
        self.messages.append((subject, message))
        self.arrived.set()

    def of(self, instance_id: str) -> list[Activity]:
        return [m for _, m in self.messages if m.id == instance_id]

    def take(self) -> list[Activity]:
        taken = [m for _, m in self.messages]
        self.messages.clear()
        return taken


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def tracker(published: Published, clock: Clock) -> ActivityTracker:
    wall = Clock(1_700_000_000.0)
    return ActivityTracker(published, SUBJECTS, INTERVAL, "gw-1", clock=wall, monotonic=clock)


async def test_the_first_request_is_reported_at_once(tracker: ActivityTracker, published: Published) -> None:
    tracker.seen(A, "echo")
    assert await tracker.flush() is None  # nothing else pending
    assert published.messages == [
        (SUBJECTS.activity("echo", A),
         Activity(app="echo", id=A, at=1_700_000_000.0, connections=0, traffic=True, gateway="gw-1")),
    ]


async def test_many_requests_within_one_interval_make_one_heartbeat(
        tracker: ActivityTracker, published: Published, clock: Clock) -> None:
    step = 1 / 32  # exact in binary: the sums below are exact too
    for _ in range(100):
        tracker.seen(A, "echo")
        await tracker.flush()
        clock.advance(step)
    assert len(published.take()) == 1
    assert await tracker.flush() == INTERVAL - 100 * step  # when the rest is due
    clock.advance(INTERVAL - 100 * step)
    await tracker.flush()
    assert [(m.traffic, m.connections) for m in published.take()] == [(True, 0)]


async def test_nothing_new_means_no_heartbeat(tracker: ActivityTracker, published: Published,
                                             clock: Clock) -> None:
    tracker.seen(A, "echo")
    await tracker.flush()
    published.take()
    clock.advance(INTERVAL * 10)
    assert await tracker.flush() is None
    assert published.messages == []


async def test_connection_zero_to_one_and_one_to_zero_publish_at_once(
        tracker: ActivityTracker, published: Published, clock: Clock) -> None:
    tracker.seen(A, "echo")
    await tracker.flush()
    published.take()
    clock.advance(0.1)  # well within the interval
    tracker.opened(A, "echo")
    await tracker.flush()
    assert [m.connections for m in published.take()] == [1]
    tracker.opened(A, "echo")  # 1 -> 2: throttled
    tracker.closed(A)  # 2 -> 1: throttled
    await tracker.flush()
    assert published.messages == []
    tracker.closed(A)  # 1 -> 0: at once
    await tracker.flush()
    assert [(m.connections, m.traffic) for m in published.take()] == [(0, False)]


async def test_client_messages_count_only_for_known_instances(
        tracker: ActivityTracker, published: Published, clock: Clock) -> None:
    tracker.touch(A)  # no route was ever seen: ignored
    tracker.closed(A)
    assert await tracker.flush() is None
    assert published.messages == [] and not tracker.tracking(A)
    tracker.opened(A, "echo")
    await tracker.flush()
    published.take()
    clock.advance(INTERVAL)
    tracker.touch(A)
    await tracker.flush()
    assert [(m.connections, m.traffic) for m in published.take()] == [(1, True)]


async def test_forgotten_instances_are_no_longer_reported(tracker: ActivityTracker, published: Published,
                                                          clock: Clock) -> None:
    tracker.seen(A, "echo")
    tracker.seen(B, "echo")
    assert tracker.tracking(A) and tracker.tracking(B)
    await tracker.flush()
    published.take()
    tracker.seen(A, "echo")
    tracker.opened(B, "echo")
    tracker.forget(A)
    tracker.forget(B)
    clock.advance(INTERVAL)
    assert await tracker.flush() is None
    assert published.messages == []
    assert not tracker.tracking(A) and not tracker.tracking(B)


async def test_force_publishes_what_is_pending_before_the_interval(
        tracker: ActivityTracker, published: Published) -> None:
    tracker.seen(A, "echo")
    await tracker.flush()
    tracker.seen(A, "echo")
    await tracker.flush(force=True)
    assert len(published.of(A)) == 2


async def test_a_failed_publish_is_logged_not_raised(tracker: ActivityTracker, published: Published,
                                                     clock: Clock) -> None:
    published.failing = True
    tracker.seen(A, "echo")
    await tracker.flush()  # no exception
    published.failing = False
    clock.advance(INTERVAL)
    tracker.seen(A, "echo")  # the next change publishes again
    await tracker.flush()
    assert [m.traffic for m in published.of(A)] == [True]


async def test_run_publishes_a_new_connection_without_waiting(tracker: ActivityTracker,
                                                              published: Published) -> None:
    task = asyncio.create_task(tracker.run())
    try:
        tracker.opened(A, "echo")
        async with asyncio.timeout(5):
            await published.arrived.wait()
        assert [m.connections for m in published.of(A)] == [1]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_page_load_is_recorded_once_as_a_visit_with_a_hash_never_the_id(published: Published,
                                                                                clock: Clock) -> None:
    recorded: list[tuple[str, Visit]] = []

    async def record(subject: str, message: Any) -> None:
        recorded.append((subject, message))
    visits = VisitLog(record, SUBJECTS, "gw-1", clock=Clock(1_700_000_000.0))
    tracker = ActivityTracker(published, SUBJECTS, INTERVAL, "gw-1", clock=Clock(1_700_000_000.0),
                              monotonic=clock, on_settled=visits.page)
    tracker.page_served(A, "echo", wait_for_socket=True)
    tracker.socket_opened(A, "echo")  # now the page has loaded
    tracker.page_served(A, "echo", wait_for_socket=True)  # a reload: no second record
    await visits.flush()
    (subject, visit), = recorded
    assert subject == SUBJECTS.visit("echo", "page")
    assert visit == Visit(kind="page", app="echo", at=1_700_000_000.0, session=session_key(A), gateway="gw-1")
    assert A not in msgspec.json.encode(visit).decode() and session_key(A) != session_key(B)
    assert browser_tag("") == "" and len(browser_tag("k" * 32)) == 16
