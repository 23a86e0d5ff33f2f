"""Operator commands: `swarmpool admin ...` as a real process against the running pool."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker


async def admin(nats_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "admin", *args, "--nats-url", nats_url, "--namespace", namespace,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_status_scale_pause_resume_drain(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1, max_=4)) as s:
        await s.wait_ready(1)
        code, out, _ = await admin(nats_server.url, namespace, "status")
        assert code == 0 and "echo" in out
        assert out.splitlines()[1].split()[1:3] == ["1", "1"]  # target 1, ready 1

        code, out, _ = await admin(nats_server.url, namespace, "scale", "echo", "3")
        assert code == 0
        await s.wait_ready(3)

        code, _, _ = await admin(nats_server.url, namespace, "pause", "echo")
        assert code == 0
        response = await s.launch()
        assert response.status == 503  # paused: no claims
        code, _, _ = await admin(nats_server.url, namespace, "resume", "echo")
        assert (await s.launch()).status == 303

        code, _, _ = await admin(nats_server.url, namespace, "drain", "echo")
        assert code == 0
        await wait_for(lambda: not s.records("ready") and not s.records("starting"), timeout=30,
                       what="the warm pool to be drained")
        assert len(s.records("claimed")) == 1  # the running session goes on


async def test_bad_admin_requests_are_clear(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=0, max_=1), gateway=False):
        code, _, err = await admin(nats_server.url, namespace, "scale", "nope", "3")
        assert code == 2 and "unknown_app" in err
        code, _, err = await admin(nats_server.url, namespace, "scale", "echo", "many")
        assert code == 2 and "size" in err
        code, _, err = await admin(nats_server.url, namespace, "retire", "echo", "a" * 26)
        assert code == 2 and "unknown_instance" in err
    code, _, err = await admin("nats://127.0.0.1:1", namespace, "status")
    assert code == 1 and "cannot reach NATS" in err


async def test_scale_down_converges_to_the_new_target(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=4, max_=8)) as s:
        await s.wait_ready(4)
        code, _, _ = await admin(nats_server.url, namespace, "scale", "echo", "2")
        assert code == 0
        await wait_for(lambda: len(s.records("ready")) == 2 and len(s.records()) == 2, timeout=30,
                       what="the pool to shrink to 2")
        assert len(await s.swarm.list_ours()) == 2
