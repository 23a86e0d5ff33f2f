"""Instance records: CAS transitions on a real nats-server's JetStream KV."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import msgspec
import nats
import pytest

from swarmpool.bus.messages import Instance
from swarmpool.bus.state import Conflict, InstanceStore, InvalidTransition
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import new_instance_id
from swarmpool.natsd import EmbeddedNats, free_port
from tests.stack import wait_for


def make(app: str = "echo", state: str = "starting") -> Instance:
    return Instance(id=new_instance_id(), app=app, state=state, created_at=time.time())  # type: ignore[arg-type]


async def test_ids_are_128_bit_base32() -> None:
    ids = {new_instance_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 26 and i.isalnum() and i == i.lower() for i in ids)


async def test_cas_lets_exactly_one_of_two_writers_win(store: InstanceStore) -> None:
    created = await store.create(make(state="starting"))
    ready = await store.cas(created, msgspec.structs.replace(created.instance, state="ready"))
    claim = msgspec.structs.replace(ready.instance, state="claimed", claimed_at=time.time())
    results = await asyncio.gather(store.cas(ready, claim), store.cas(ready, claim), return_exceptions=True)
    assert sum(isinstance(r, Conflict) for r in results) == 1
    assert sum(not isinstance(r, Exception) for r in results) == 1
    lost = next(r for r in results if isinstance(r, Conflict))
    assert created.instance.id not in str(lost)  # logged with a traceback: the id is a capability


async def test_illegal_transition_is_refused(store: InstanceStore) -> None:
    created = await store.create(make(state="starting"))
    with pytest.raises(InvalidTransition):
        await store.cas(created, msgspec.structs.replace(created.instance, state="claimed"))


async def test_second_store_mirrors_the_first(store: InstanceStore, nc, subjects) -> None:  # type: ignore[no-untyped-def]
    other = await InstanceStore.open(nc, subjects, time.time)
    try:
        created = await store.create(make())
        for _ in range(100):
            if other.get("echo", created.instance.id):
                break
            await other.wait_changed(0.1)
        assert other.get("echo", created.instance.id) is not None
        await store.delete(created.instance)
        for _ in range(100):
            if other.get("echo", created.instance.id) is None:
                break
            await other.wait_changed(0.1)
        assert other.get("echo", created.instance.id) is None
    finally:
        await other.close()


async def test_on_change_listener_can_be_stopped(store: InstanceStore) -> None:
    seen: list[str] = []
    stop = store.on_change(lambda old, new: seen.append(new.id if new else "gone"))
    first = await store.create(make())
    assert seen == [first.instance.id]
    stop()
    await store.create(make())
    assert seen == [first.instance.id]


async def test_concurrent_overrides_from_two_hosts_both_take_effect(nc, subjects) -> None:  # type: ignore[no-untyped-def]
    """A `pause` and a `scale` handled by two function hosts at once: neither undoes the other."""
    from swarmpool.bus.state import ConfigStore

    host_a, host_b = await ConfigStore.open(nc, subjects), await ConfigStore.open(nc, subjects)
    try:
        for round_ in range(5):  # both start from the same cached view each round
            await asyncio.gather(
                host_a.update("echo", lambda o: msgspec.structs.replace(o, paused=round_ % 2 == 0)),
                host_b.update("echo", lambda o: msgspec.structs.replace(o, size=10 + round_)))
            fresh = await ConfigStore.open(nc, subjects)
            try:
                assert (fresh.cached("echo").paused, fresh.cached("echo").size) == (round_ % 2 == 0, 10 + round_)
            finally:
                await fresh.close()
    finally:
        await host_a.close()
        await host_b.close()


async def test_the_engine_trust_and_the_catalogue_survive_racing_writers(nc, subjects) -> None:  # type: ignore[no-untyped-def]
    """The read-modify-CAS retry (bus/state.py read_modify_cas) under races: three gaps marked by each of two hosts
    at once all count; of two hosts storing the first catalogue `only_if_absent`, exactly one stores it."""
    from swarmpool.bus.state import CatalogueStore, ConfigStore, catalogue_file

    host_a, host_b = await ConfigStore.open(nc, subjects), await ConfigStore.open(nc, subjects)
    cat_a, cat_b = await CatalogueStore.open(nc, subjects), await CatalogueStore.open(nc, subjects)
    try:
        await asyncio.gather(*(host.mark_gap(f"gap {i}") for i in range(3) for host in (host_a, host_b)))  # 6 writers: each loses at most 5 races of its 8 attempts
        fresh = await ConfigStore.open(nc, subjects)
        try:
            assert fresh.trust().gap == 6 and not fresh.trusted()
        finally:
            await fresh.close()
        stored = await asyncio.gather(cat_a.publish(catalogue_file("a = 1", "a.toml", 1.0), only_if_absent=True),
                                      cat_b.publish(catalogue_file("b = 1", "b.toml", 2.0), only_if_absent=True))
        assert sorted(stored) == [False, True]
        assert await cat_b.publish(catalogue_file("c = 1", "c.toml", 3.0))  # a plain publish replaces it
        for store in (cat_a, cat_b):
            await wait_for(lambda s=store: s.current() is not None and s.current().source == "c.toml",  # type: ignore[union-attr]
                           timeout=5, what="both hosts following the stored catalogue")
    finally:
        for closing in (host_a, host_b, cat_a, cat_b):
            await closing.close()


async def test_a_mirror_follows_the_bucket_again_as_soon_as_a_restarted_nats_server_is_back(
        tmp_path: Path, namespace: str) -> None:
    """nats-server killed -9 and restarted on the same store: the mirror's watch (its consumer lost with the
    server) follows the bucket again once its connection is back, not only when nats-py has missed two
    heartbeats (10-20 s of a frozen mirror: no refill, stale routes). nats-py's own heartbeat recovery is
    switched off here, so only the mirror's can bring it back."""
    server = EmbeddedNats(tmp_path / "nats", free_port(), auth=False)
    await server.start()
    try:
        nc = await nats.connect(server.url, reconnect_time_wait=0.5)
        store = await InstanceStore.open(nc, Subjects(namespace), time.time)
        try:
            before = await store.create(make())
            jsi = store._mirror._watcher._sub._sub._jsi  # type: ignore[union-attr]
            jsi._hbtask.cancel()
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            await server.stop()  # reaps the killed process
            await server.start()  # same store and port
            await wait_for(lambda: nc.is_connected, timeout=30,
                           what="the connection back")
            writer = await nats.connect(server.url)
            try:
                other = await InstanceStore.open(writer, Subjects(namespace), time.time)
                try:
                    after = await other.create(make())
                finally:
                    await other.close()
            finally:
                await writer.close()
            await wait_for(lambda: store.get("echo", after.instance.id), timeout=30,
                           what="the mirror to see a record written after the restart")
            assert store.get("echo", before.instance.id) is not None
        finally:
            await store.close()
            await nc.close()
    finally:
        await server.stop()
