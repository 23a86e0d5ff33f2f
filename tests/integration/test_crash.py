"""Crashes: the functions process killed mid-run leaves no leaked service and no ghost record (invariant 3)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import nats
import pytest

from swarmpool.bus.messages import Instance
from swarmpool.bus.state import InstanceStore
from swarmpool.ids import new_instance_id
from swarmpool.bus.subjects import Subjects
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import InstanceSpec
from bench.support import stop_child
from tests.stack import echo_catalogue, wait_for

pytestmark = pytest.mark.docker

CATALOGUE = echo_catalogue(size=4, max_=8, extra="").replace(
    "max_instances = 120", "max_instances = 120\norphan_grace = 4")


@asynccontextmanager
async def functions_process(nats_url: str, namespace: str, catalogue: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """`swarmpool functions` as a real separate process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "functions", "--nats-url", nats_url, "--namespace", namespace,
        "--catalogue", str(catalogue), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        await stop_child(proc)


def consistent(store: InstanceStore, services: list, ready: int) -> bool:  # type: ignore[type-arg]
    live = {r.id for r in store.all() if r.state != "retiring"}
    return ({s.id for s in services} == live and sum(r.state == "ready" for r in store.all()) == ready
            and all(r.state in ("ready", "claimed") for r in store.all()))


async def test_restart_mid_run_leaves_no_leaks_or_ghosts(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(CATALOGUE)
    nc = await nats.connect(nats_server.url)
    swarm = Swarm(namespace)
    store = await InstanceStore.open(nc, Subjects(namespace), time.time)
    try:
        async with functions_process(nats_server.url, namespace, catalogue) as first:
            # kill -9 while instances are being created and probed
            await wait_for(lambda: len(store.all()) >= 2, timeout=60, what="warm-up to begin")
            first.kill()
            await first.wait()
        # the crash left half-done work; add a leaked service and a ghost record on top
        leaked_id = new_instance_id()
        await swarm.create(InstanceSpec(app="echo", id=leaked_id, image=echo_image, port=8888,
                                        env={"SWARMPOOL_PREFIX": f"/i/{leaked_id}/"}))
        ghost = Instance(id=new_instance_id(), app="echo", state="starting", service_id="no-such-service",
                         created_at=time.time() - 60)
        await store.create(ghost)
        ghost_claimed = await store.create(msgspec.structs.replace(ghost, id=new_instance_id(), state="starting"))
        await store.cas(ghost_claimed, msgspec.structs.replace(ghost_claimed.instance, state="ready"))

        async with functions_process(nats_server.url, namespace, catalogue):
            async def settled() -> bool:
                return consistent(store, await swarm.list_ours(), ready=4)

            await wait_for(settled, timeout=90, what="services and records to agree with 4 ready", interval=0.5)
        ids = {r.id for r in store.all()}
        assert leaked_id not in ids and ghost.id not in ids and ghost_claimed.instance.id not in ids
        assert leaked_id not in {s.id for s in await swarm.list_ours()}
    finally:
        await swarm.remove_all()
        await swarm.close()
        await store.close()
        await nc.drain()


async def test_malformed_bus_messages_are_logged_counted_and_dropped(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    from tests.stack import running_stack

    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1), docker=False) as s:
        await s.wait_ready(1)
        subjects = Subjects(namespace)
        reply = await s.nc.request(subjects.claim("echo"), b"{not json", timeout=5)
        assert msgspec.json.decode(reply.data)["error"] == "malformed"
        reply = await s.nc.request(subjects.claim("echo"), b'{"app": 5}', timeout=5)
        assert msgspec.json.decode(reply.data)["error"] == "malformed"
        await s.nc.publish(subjects.activity("echo", "x" * 26), b"\xff\xfe")
        await s.nc.flush()
        host = s.hosts[0]
        await wait_for(lambda: host.metrics.value("swarmpool_messages_malformed_total", handler="activity.heartbeat") == 1,
                       timeout=5, what="the malformed heartbeat to be counted")
        assert host.metrics.value("swarmpool_messages_malformed_total", handler="claimer.claim") == 2
        # a claim must name the app of its subject (bus permissions protect subjects, not bodies)
        reply = await s.nc.request(subjects.claim("echo"), b'{"app": "other"}', timeout=5)
        assert msgspec.json.decode(reply.data)["error"] == "subject_mismatch"
        assert host.metrics.value("swarmpool_messages_dropped_total", handler="claimer.claim",
                                  reason="mismatch") == 1
        # the loop goes on: a good claim still works
        response = await s.launch()
        assert response.status == 303


async def test_swarmpool_up_without_docker_says_so_and_exits_1(tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--state-dir", str(tmp_path), "--no-build",
        env={**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"Docker is not usable" in err and b"Traceback" not in err
    assert not (tmp_path / "jetstream").exists()  # nothing started


