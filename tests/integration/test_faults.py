"""Faults a lab server really sees (issue 8), on an engine of the tests' own (tests/engine.py):
`swarmpool up` runs as a real process inside the engine's network namespace, the test clicks
through its gateway at the namespace's address and restarts or kills things under it."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import docker
import docker.errors
import pytest

from tests.engine import Engine, namespaced_engine
from tests.stack import echo_catalogue, wait_for

pytestmark = pytest.mark.docker

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
        """One click; the instance path it was sent to, or None for the waiting room."""
        async with self.http.get(f"{self.base}/launch/echo", allow_redirects=False) as r:
            await r.read()
            if r.status == 303:
                return r.headers["Location"]
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
        handed = await clicks_never_dead(clicks, 4, restarted + 60)
        assert len(handed) == 4
        status, page = await clicks.get(session)
        assert status == 404 and "session has ended" in page, (status, page[:200])
        await wait_for(lambda: pool_whole(engine), timeout=60, what="the pool whole again")


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

