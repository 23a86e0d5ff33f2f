"""The instance mirror's indexes (per app, ready order, sessions per browser) follow every change the watch
delivers, and agree with the plain walks they replace: entries are fed to the mirror directly, no NATS."""

from __future__ import annotations

import random
from dataclasses import dataclass

import msgspec
import pytest

from swarmpool.bus.messages import Instance
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.functions.policy import live_sessions, pick_claim_order
from swarmpool.ids import new_handle, new_instance_id

NOW = 80_000.0
_encode = msgspec.json.Encoder().encode


@dataclass
class Entry:
    """What a KV watch delivers for one change."""

    key: str
    value: bytes
    revision: int
    operation: str | None = None


def mirror() -> InstanceStore:
    return InstanceStore(None, None, None, Subjects("t"), lambda: NOW)  # type: ignore[arg-type]


def record(app: str, state: str, ready_at: float | None = None, browser: str = "", handle: bool = True) -> Instance:
    return Instance(id=new_instance_id(), app=app, state=state, created_at=NOW - 500, ready_at=ready_at,
                    browser=browser, handle=new_handle() if handle else "")


class Feed:
    """Writes records into a mirror as its watch would, one revision each."""

    def __init__(self, store: InstanceStore) -> None:
        self.store = store
        self.revision = 0

    def put(self, instance: Instance) -> None:
        self.revision += 1
        self.store._apply(Entry(instance.key, _encode(instance), self.revision))

    def delete(self, instance: Instance) -> None:
        self.revision += 1
        self.store._apply(Entry(instance.key, b"", self.revision, "DEL"))


def walk_order(store: InstanceStore, app: str, skip: set[str] = set()) -> list[str]:
    """Every ready record in the index's order, by asking for the oldest again and again."""
    seen: set[str] = set(skip)
    out = []
    while (found := store.oldest_ready(app, skip=seen)) is not None:
        seen.add(found.instance.key)
        if found.instance.handle:
            out.append(found.instance.id)
    return out


async def test_the_ready_index_keeps_the_claim_order_through_random_changes() -> None:
    rng = random.Random(17)
    store = mirror()
    feed = Feed(store)
    live: dict[str, Instance] = {}
    for step in range(600):
        action = rng.random()
        if live and action < 0.45:
            old = live[rng.choice(sorted(live))]
            state = rng.choice(["ready", "claimed", "retiring", "starting"])
            new = msgspec.structs.replace(old, state=state, ready_at=NOW - rng.randint(0, 50) if state == "ready"
                                          else old.ready_at, browser=rng.choice(["", "b1", "b2"]))
            live[new.key] = new
            feed.put(new)
        elif live and action < 0.6:
            gone = live.pop(rng.choice(sorted(live)))
            feed.delete(gone)
        else:
            app = rng.choice(["a", "b"])
            state = rng.choice(["ready", "starting", "claimed"])
            new = record(app, state, ready_at=NOW - rng.randint(0, 50) if state == "ready" else None,
                         browser=rng.choice(["", "b1", "b2"]) if state == "claimed" else "",
                         handle=rng.random() > 0.1)
            live[new.key] = new
            feed.put(new)
        if step % 25 == 0:
            for app in ("a", "b"):
                records = [r for r in live.values() if r.app == app]
                assert sorted(r.id for r in store.all(app)) == sorted(r.id for r in records)
                assert walk_order(store, app) == [r.id for r in pick_claim_order(records, set())]
                assert [r.id for r in store.ready(app) if r.handle] == walk_order(store, app)
                for browser in ("b1", "b2"):
                    assert live_sessions(store.sessions(app, browser), browser) == live_sessions(records, browser)
    assert len(store.all()) == len(live)


async def test_oldest_ready_passes_over_skipped_keys_and_follows_deletes() -> None:
    store = mirror()
    feed = Feed(store)
    older, newer = record("a", "ready", ready_at=NOW - 20), record("a", "ready", ready_at=NOW - 10)
    feed.put(newer)
    feed.put(older)
    found = store.oldest_ready("a")
    assert found is not None and found.instance.id == older.id
    found = store.oldest_ready("a", skip={older.key})
    assert found is not None and found.instance.id == newer.id
    feed.put(msgspec.structs.replace(older, state="claimed", browser="b9"))
    found = store.oldest_ready("a")
    assert found is not None and found.instance.id == newer.id
    assert [r.id for r in store.sessions("a", "b9")] == [older.id]
    feed.delete(newer)
    assert store.oldest_ready("a") is None and store.oldest_ready("elsewhere") is None
    assert store.sessions("a", "") == []  # no cookie: no sessions to count
    assert [r.id for r in store.all("a")] == [older.id] and store.all("b") == []


@pytest.mark.parametrize("n", [1000])
async def test_a_burst_of_changes_wakes_waiting_claims_once(n: int) -> None:
    """One wake-up task for a burst of mirror changes, not one per change (a catch-up of 1,000 records)."""
    store = mirror()
    feed = Feed(store)
    woken = []
    original = store._wake

    async def counting_wake() -> None:
        woken.append(1)
        await original()

    store._wake = counting_wake  # type: ignore[method-assign]
    for _ in range(n):
        feed.put(record("a", "starting"))
    assert await store.wait_changed(5.0)  # the one scheduled wake-up runs and wakes this waiter
    assert len(woken) == 1
