"""Faults a lab server really sees (issue 8), on an engine of the tests' own (tests/engine.py):
`swarmpool up` runs as a real process inside the engine's network namespace, the test clicks
through its gateway at the namespace's address and restarts or kills things under it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import docker
import docker.errors
import msgspec
import nats
import nats.js.errors
import pytest

from swarmpool.bus.messages import Instance
from swarmpool.bus.state import stored_keys
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import EmbeddedNats, free_port
from tests.engine import Engine, namespaced_engine
from tests.integration.test_crash import functions_process
from tests.stack import Stack, claims_logged, echo_catalogue, running_stack, wait_for

pytestmark = [pytest.mark.docker, pytest.mark.faults]

NAMESPACE = "spfault"
PORT = 8000
SIZE = 3


@pytest.fixture(scope="module")
def engine(echo_image: str) -> Iterator[Engine]:
    """One namespaced engine shared by the fault tests; everything of it is removed afterwards."""
    with namespaced_engine(f"spf{os.getpid() % 10000}", 40 + os.getpid() % 200, [echo_image]) as e:
        yield e


@dataclass
class Up:
    """One `swarmpool up` process inside the engine's namespace."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    def saw(self, text: str) -> bool:
        return any(text in line for line in self.lines)


async def start_up(engine: Engine, state: Path, catalogue: Path, port: int = PORT) -> Up:
    proc = await asyncio.create_subprocess_exec(
        *engine.inside(sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(catalogue), "--host",
                       "0.0.0.0", "--port", str(port), "--state-dir", str(state), "--namespace", NAMESPACE,
                       "--no-build"),
        env=engine.env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    up = Up(proc)

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            up.lines.append(raw.decode(errors="replace"))

    up.reader = asyncio.create_task(read())
    return up


async def exits(up: Up) -> int:
    """Wait (with a deadline) until a copy that must refuse to start exits by itself; its exit code."""
    async with asyncio.timeout(60):
        await up.proc.wait()
    return await stop_up(up)


async def stop_up(up: Up, sig: int = signal.SIGINT) -> int:
    if up.proc.returncode is None:
        up.proc.send_signal(sig)
        try:
            async with asyncio.timeout(60):
                await up.proc.wait()
        except TimeoutError:
            up.proc.kill()
            await up.proc.wait()
    if up.reader is not None:
        await asyncio.gather(up.reader, return_exceptions=True)
    assert up.proc.returncode is not None
    print("".join(l for l in up.lines if l[:2].isdigit() or "pool:" in l)[-12000:])  # shown when a test fails
    return up.proc.returncode


@asynccontextmanager
async def running_up(engine: Engine, state: Path, catalogue: Path) -> AsyncIterator[Up]:
    up = await start_up(engine, state, catalogue)
    try:
        await wait_for(lambda: up.saw(f"echo {SIZE}/{SIZE} ready") or up.proc.returncode is not None,
                       timeout=90, what="a warm pool")
        assert up.proc.returncode is None, "".join(up.lines)
        yield up
    finally:
        await stop_up(up)


class Clicks:
    """A student's browser against the gateway in the namespace."""

    def __init__(self, engine: Engine, http: aiohttp.ClientSession) -> None:
        self.base = f"http://{engine.address}:{PORT}"
        self.http = http

    async def click(self) -> str | None:
        """One click; the instance path it was sent to, or None for the waiting room (or a place in line)."""
        async with self.http.get(f"{self.base}/launch/echo", allow_redirects=False) as r:
            await r.read()
            if r.status == 303 and "/ticket/" not in r.headers["Location"]:
                return r.headers["Location"]
            if r.status == 303:
                return None
            assert r.status in (200, 503), f"a click answered {r.status}"
            return None

    async def get(self, path: str) -> tuple[int, str]:
        async with self.http.get(f"{self.base}{path}", allow_redirects=False) as r:
            return r.status, await r.text()


def services(engine: Engine) -> dict[str, str]:
    """Our services on the engine, name -> state of its newest task."""
    client = engine.client()
    try:
        found = {}
        for s in client.api.services(filters={"label": f"swarmpool.owner={NAMESPACE}"}):
            try:
                tasks = client.api.tasks(filters={"service": s["ID"]})
            except docker.errors.NotFound:  # removed since the listing
                continue
            newest = max(tasks, key=lambda t: t["Version"]["Index"]) if tasks else {}
            found[s["Spec"]["Name"]] = (newest.get("Status") or {}).get("State", "none")
        return found
    finally:
        client.close()


def pool_whole(engine: Engine) -> bool:
    """Every service of ours runs (no dead one listed), and at least the warm pool is there."""
    found = services(engine)
    return len(found) >= SIZE and all(state == "running" for state in found.values())


async def clicks_never_dead(clicks: Clicks, n: int, deadline: float) -> list[str]:
    """Click until `n` clicks got an instance (or the deadline passes): each one handed out must
    answer (never a 502 from a dead instance)."""
    handed: list[str] = []
    while len(handed) < n and time.monotonic() < deadline:
        location = await clicks.click()
        if location is None:
            await asyncio.sleep(0.2)  # the waiting room retries by itself; so does this browser
            continue
        status, _ = await clicks.get(location)
        assert status == 200, f"click {len(handed) + 1} was handed a dead instance ({status})"
        handed.append(location)
    return handed


@pytest.fixture
def catalogue(tmp_path: Path) -> Path:
    path = tmp_path / "catalogue.toml"
    path.write_text(echo_catalogue(size=SIZE, max_=12))
    return path


async def test_engine_restart_hands_out_no_dead_instance_and_ends_dead_sessions(
        engine: Engine, tmp_path: Path, catalogue: Path) -> None:
    """Invariant 2 across an engine restart (dockerd SIGTERM, started again): no click answered with
    a dead instance; the session open before ends with the session-ended page, not a 502; the pool
    is whole again (no dead service listed) within a reconcile period plus the starts."""
    async with running_up(engine, tmp_path / "state", catalogue), aiohttp.ClientSession() as http:
        clicks = Clicks(engine, http)
        session = await clicks.click()
        assert session is not None and (await clicks.get(session))[0] == 200
        await asyncio.to_thread(engine.restart)
        restarted = time.monotonic()
        # every warm instance died with the engine: the four clicks wait for fresh starts, slow under load
        handed = await clicks_never_dead(clicks, 4, restarted + 120)
        print(f"{len(handed)} clicks handed an instance {time.monotonic() - restarted:.0f} s after the restart")
        assert len(handed) == 4, f"only {len(handed)} of 4 clicks got an instance within 120 s"
        status, page = await clicks.get(session)
        assert status == 404 and "session has ended" in page, (status, page[:200])
        await wait_for(lambda: pool_whole(engine), timeout=120, what="the pool whole again")
        print(f"the pool whole {time.monotonic() - restarted:.0f} s after the restart")


async def test_power_cut_restart_hands_out_no_dead_instance(engine: Engine, tmp_path: Path,
                                                            catalogue: Path) -> None:
    """A power cut (up killed -9, the engine restarted, up started again on the same state dir): the
    stale owner lease and state-dir lock of the dead copy do not block the restart, no click gets a
    dead instance, the old session ends cleanly, and no dead service stays listed."""
    state = tmp_path / "state"
    up = await start_up(engine, state, catalogue)
    try:
        await wait_for(lambda: up.saw(f"echo {SIZE}/{SIZE} ready"), timeout=90, what="a warm pool")
        async with aiohttp.ClientSession() as http:
            clicks = Clicks(engine, http)
            session = await clicks.click()
            assert session is not None
            os.killpg(up.proc.pid, signal.SIGKILL)  # the whole process group: nats-server too
            await stop_up(up)
            await asyncio.to_thread(engine.restart)
            async with running_up(engine, state, catalogue) as again:
                assert not again.saw("belongs to another")
                handed = await clicks_never_dead(clicks, 3, time.monotonic() + 60)
                assert len(handed) == 3
                status, page = await clicks.get(session)
                assert status == 404 and "session has ended" in page, (status, page[:200])
                await wait_for(lambda: pool_whole(engine), timeout=60, what="no dead service listed")
    finally:
        if up.proc.returncode is None:
            await stop_up(up)


async def test_second_copy_is_refused_and_touches_nothing(engine: Engine, tmp_path: Path,
                                                          catalogue: Path) -> None:
    """One owner per namespace: a second `up` with the same namespace (own state dir) is refused at
    start naming the running one; one with the same state dir is refused by the lock; a copy whose
    port is taken touches nothing; the running copy's services are untouched throughout."""
    async with running_up(engine, tmp_path / "state", catalogue) as first:
        before = set(services(engine))
        second = await start_up(engine, tmp_path / "other-state", catalogue, port=PORT + 11)
        assert await exits(second) != 0
        assert any("belongs to another running swarmpool up" in line and str(tmp_path / "state") in line
                   for line in second.lines), "".join(second.lines)
        same_dir = await start_up(engine, tmp_path / "state", catalogue, port=PORT + 11)
        assert await exits(same_dir) != 0
        assert any("state dir" in line for line in same_dir.lines), "".join(same_dir.lines)
        port_taken = await start_up(engine, tmp_path / "third-state", catalogue, port=PORT)
        assert await exits(port_taken) != 0
        assert not any("removed" in line for line in port_taken.lines), "".join(port_taken.lines)
        assert before <= set(services(engine)) and first.proc.returncode is None
    assert services(engine) == {}  # the owner's clean stop removed its own



# ---- the control plane's own processes killed -9 (on the host's swarm, a namespace per test) ----


async def stored_records(url: str, namespace: str) -> dict[str, Instance]:
    """Every record in the instance bucket, read from KV itself on a fresh connection (no mirror)."""
    nc = await nats.connect(url)
    try:
        kv = await nc.jetstream().key_value(Subjects(namespace).instances_bucket)
        found = {}
        for key in await stored_keys(kv):  # one snapshot: kv.keys() misses records rewritten meanwhile (heartbeats)
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:  # deleted since (or before: its tombstone is listed)
                continue
            if entry.value:
                found[key] = msgspec.json.decode(entry.value, type=Instance)
        return found
    finally:
        await nc.close()


def instance_of(location: str) -> str:
    """The id in a `/i/<id>/...` location."""
    assert location.startswith("/i/"), location
    return location.split("/")[2]


async def click(s: Stack) -> str | None:
    """One click through the stack's gateway: the location of the instance, or None (waiting room, a place in line)."""
    response = await s.launch()
    if response.status == 303 and "/ticket/" not in response.headers["Location"]:
        return response.headers["Location"]
    if response.status == 303:
        return None
    assert response.status in (200, 503), f"a click answered {response.status}"
    return None


async def answered_by(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """What the echo instance behind a session URL says about itself (its id and container), after
    loading its HTML page as a student's browser would (the claim has settled: its refill starts)."""
    async with http.get(url.rsplit("/", 1)[0] + "/page", allow_redirects=False) as r:
        assert r.status == 200, (r.status, (await r.text())[:200])
    async with http.get(url, allow_redirects=False) as r:
        assert r.status == 200, (r.status, (await r.text())[:200])
        answer: dict[str, Any] = await r.json()
        return answer


async def test_nats_server_kill_9_loses_no_record_and_hands_out_nothing_twice(
        namespace: str, echo_image: str, tmp_path: Path) -> None:
    """Invariant 1 (handed out at most once) across a nats-server kill -9 and restart on the same
    JetStream store and port, and no record lost: every record from before is still there (claimed
    ones still claimed by the same claim), claims resume within a bounded time, no id is handed out
    twice (the clicks' locations and the event log's `claimed` events, each id at most once)."""
    server = EmbeddedNats(tmp_path / "nats", free_port(), auth=False)
    await server.start()
    try:
        async with running_stack(server.url, namespace, echo_catalogue(size=3, max_=8)) as s:
            await s.wait_ready(3)
            handed = [await click(s) for _ in range(2)]
            for location in handed:
                assert location is not None
                await answered_by(s.http, s.url + location)
            await wait_for(lambda: len(s.records("ready")) == 3, timeout=60, what="the pool refilled")
            before = await stored_records(server.url, namespace)
            assert sum(r.state == "claimed" for r in before.values()) == 2 and len(before) == 5

            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            await server.stop()  # reaps the killed process
            await server.start()  # same state dir (JetStream store) and port

            # once JetStream has recovered its store (a moment after the port opens, under load),
            # every record from before is there again; a read refused meanwhile is tried again
            async def recovered() -> dict[str, Instance] | None:
                try:
                    found = await stored_records(server.url, namespace)
                except (OSError, nats.errors.Error):  # not yet answering (a lost bucket times out below)
                    return None
                return found if set(before) <= set(found) else None

            after = await wait_for(recovered, timeout=30, interval=0.2, what="every record from before the kill")
            for key, old in before.items():
                if old.state == "claimed":
                    assert after[key].state == "claimed" and after[key].claimed_at == old.claimed_at
            restarted = time.monotonic()
            # claims resume once the hosts have reconnected; the fourth needs a refill, which waits until
            # the host's mirror follows the bucket again (its watch recreated on the reconnect) and then
            # a Docker start: at load 10+ that can take more than 30 s
            while len(handed) < 6:
                assert time.monotonic() - restarted < 90, f"claims did not resume ({len(handed) - 2} after)"
                location = await click(s)
                if location is None:
                    await asyncio.sleep(0.2)  # the waiting room retries by itself; so does this browser
                    continue
                handed.append(location)
                assert (await answered_by(s.http, s.url + location))["id"] == instance_of(location)
            print(f"4 claims {time.monotonic() - restarted:.0f} s after the nats-server restart")
            ids = [instance_of(h) for h in handed if h]
            assert len(set(ids)) == len(ids), f"handed out twice: {ids}"
            claims = await claims_logged(s.nc, namespace, ids)
            assert max(claims.values()) == 1, f"claimed twice in the event log: {claims}"
    finally:
        await server.stop()


async def test_function_host_kill_9_mid_burst_hands_out_nothing_twice_leaks_nothing(
        nats_server: EmbeddedNats, namespace: str, echo_image: str, tmp_path: Path) -> None:
    """Invariants 1 and 3: two `swarmpool functions` processes share a pool of 10; 30 students click
    at once and one host is killed -9 at the burst's third claim, claims and starts under way. Every
    click is answered (a session or the waiting room), claims go on on the other host, no instance is
    handed out twice (the 303s' ids are distinct; the event log has at most one `claimed` per id),
    and once the starts under way are done (a reconcile period plus the orphan grace later) every
    service labelled ours has a record and every record a service, none left starting, failed or retiring."""
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=10, max_=24, parallel=6).replace(
        "max_instances = 120", "max_instances = 120\norphan_grace = 3\nsettle_cap = 2"))
    async with running_stack(nats_server.url, namespace, catalogue.read_text(), hosts=0) as s, \
            functions_process(nats_server.url, namespace, catalogue) as doomed, \
            functions_process(nats_server.url, namespace, catalogue) as survivor:
        await s.wait_ready(10)
        killed_at: list[int] = []  # how many clicks had been answered then
        burst: list[asyncio.Task[str | None]] = []

        def kill_at_third_claim(old: Instance | None, new: Instance | None) -> None:
            if not killed_at and len(s.records("claimed")) >= 3:
                doomed.kill()  # SIGKILL, from the mirror's listener: most claims still under way
                killed_at.append(sum(t.done() for t in burst))

        stop_listening = s.store.on_change(kill_at_third_claim)
        burst += [asyncio.create_task(click(s)) for _ in range(30)]
        await wait_for(lambda: killed_at, timeout=30, what="the host killed mid-burst")
        stop_listening()
        await doomed.wait()
        assert killed_at[0] < 10, f"killed after {killed_at[0]} answers: not in the middle of the burst"
        # every click answered: a session or the waiting room (a claim the dead host took and never
        # answered is lost to its student, who waits and clicks again; never handed to another)
        locations = [a for a in await asyncio.gather(*burst) if a is not None]
        for location in locations:
            assert (await answered_by(s.http, s.url + location))["id"] == instance_of(location)
        after_burst = len(locations)
        later = time.monotonic()
        while len(locations) < after_burst + 5:  # claims go on on the surviving host
            assert time.monotonic() - later < 90, f"claims did not go on ({len(locations) - after_burst} after)"
            location = await click(s)
            if location is None:
                await asyncio.sleep(0.2)  # the waiting room retries by itself; so does this browser
                continue
            assert (await answered_by(s.http, s.url + location))["id"] == instance_of(location)
            locations.append(location)
        print(f"5 claims on the surviving host {time.monotonic() - later:.0f} s after the burst")
        assert survivor.returncode is None
        ids = [instance_of(location) for location in locations]
        assert len(set(ids)) == len(ids), f"handed out twice: {Counter(ids).most_common(3)}"
        claims = await claims_logged(s.nc, namespace, ids)
        assert max(claims.values()) == 1, f"claimed twice in the event log: {claims.most_common(3)}"

        async def agree() -> bool:
            services = {x.id for x in await s.swarm.list_ours()}
            records = await stored_records(nats_server.url, namespace)
            return (services == {r.id for r in records.values()}
                    and all(r.state in ("ready", "claimed") for r in records.values()))

        # the refills started by the last claims must be ready too: Docker starts at load 10+ outlast 45 s
        await wait_for(agree, timeout=90, interval=0.5, what="services and records to agree (no leak, no ghost)")
        print(f"services and records agree {time.monotonic() - later:.0f} s after the burst")
        records = await stored_records(nats_server.url, namespace)
        assert set(ids) <= {r.id for r in records.values() if r.state == "claimed"}


@asynccontextmanager
async def gateway_process(nats_url: str, namespace: str, catalogue: Path,
                          port: int) -> AsyncIterator[asyncio.subprocess.Process]:
    """`swarmpool gateway` as a real separate process, answering /healthz."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "gateway", "--nats-url", nats_url, "--namespace", namespace,
        "--catalogue", str(catalogue), "--host", "127.0.0.1", "--port", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with aiohttp.ClientSession() as http:
            async def healthy() -> bool:
                assert proc.returncode is None, f"the gateway exited with {proc.returncode}"
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(healthy, timeout=30, interval=0.1, what="the gateway's /healthz")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_gateway_kill_9_sessions_continue(nats_server: EmbeddedNats, namespace: str, echo_image: str,
                                                tmp_path: Path) -> None:
    """A gateway killed -9 loses no session: a new gateway (another port) rebuilds its route table
    from the records in KV, and the session's URL answers from the same instance (same id, same
    container), still claimed (invariant 5: only claimed instances are routable, from any gateway)."""
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=2))
    async with running_stack(nats_server.url, namespace, catalogue.read_text(), gateway=False) as s:
        await s.wait_ready(2)
        first_port = free_port()
        async with gateway_process(nats_server.url, namespace, catalogue, first_port) as first:
            async with s.http.get(f"http://127.0.0.1:{first_port}/launch/echo", allow_redirects=False) as r:
                assert r.status == 303, r.status
                location = r.headers["Location"]
            before = await answered_by(s.http, f"http://127.0.0.1:{first_port}{location}")
            first.kill()
            await first.wait()
        second_port = free_port()
        async with gateway_process(nats_server.url, namespace, catalogue, second_port):
            after = await answered_by(s.http, f"http://127.0.0.1:{second_port}{location}")
        assert after["id"] == before["id"] == instance_of(location)
        assert after["hostname"] == before["hostname"]  # the same container
        record = s.store.get("echo", instance_of(location))
        assert record is not None and record.instance.state == "claimed"
