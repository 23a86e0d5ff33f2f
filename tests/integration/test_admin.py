"""Operator commands: `swarmpool admin ...` as a real process against the running pool; the admin
service in NATS service discovery; scale --for and class schedules in status."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from nats.aio.client import Client

from swarmpool.bus.subjects import Subjects
from swarmpool.bus.verbs import VERBS
from swarmpool.host import functions_host
from swarmpool.natsd import EmbeddedNats
from swarmpool.swarm.adapter import Swarm
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker
NO_STATE = "/nonexistent/swarmpool-state"  # never pick up a developer's own operator credentials


async def swarmpool_cli(nats_url: str | None, namespace: str, *args: str, state_dir: str = NO_STATE,
                        timeout: float = 120) -> tuple[int, str, str]:
    """`swarmpool <args> --nats-url URL --namespace NS --state-dir DIR` as an operator runs it: (exit code,
    stdout, stderr)."""
    url = ["--nats-url", nats_url] if nats_url else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", *args, *url, "--namespace", namespace,
        "--state-dir", state_dir, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def admin(nats_url: str | None, namespace: str, *args: str, state_dir: str = NO_STATE) -> tuple[int, str, str]:
    return await swarmpool_cli(nats_url, namespace, "admin", *args, state_dir=state_dir)


async def status_json(nats_url: str, namespace: str) -> dict[str, dict[str, object]]:
    code, out, err = await admin(nats_url, namespace, "status", "--json")
    assert code == 0, err
    return json.loads(out)["apps"]  # type: ignore[no-any-return]


async def test_every_verb(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1, max_=4), docker=False) as s:
        await s.wait_ready(1)
        code, out, _ = await admin(nats_server.url, namespace, "status")
        assert code == 0
        header, row = out.splitlines()[:2]
        assert header.split()[:7] == ["app", "target", "ready", "starting", "claimed", "retiring", "failed"]
        assert row.split()[:3] == ["echo", "1", "1"] and row.split()[-1] == "catalogue"
        apps = await status_json(nats_server.url, namespace)
        assert {k: apps["echo"][k] for k in ("target", "ready", "starting", "claimed", "retiring", "failed",
                                             "target_source")} == {
            "target": 1, "ready": 1, "starting": 0, "claimed": 0, "retiring": 0, "failed": 0,
            "target_source": "catalogue"}

        code, out, _ = await admin(nats_server.url, namespace, "scale", "echo", "3")
        assert code == 0 and "scale echo to 3" in out
        await s.wait_ready(3)
        assert (await status_json(nats_server.url, namespace))["echo"]["target_source"] == "scale"

        assert (await admin(nats_server.url, namespace, "pause", "echo"))[0] == 0
        assert (await s.launch()).status == 503  # paused: no claims
        assert (await admin(nats_server.url, namespace, "resume", "echo"))[0] == 0
        assert (await s.launch()).status == 303
        assert (await admin(nats_server.url, namespace, "pause", "--all"))[0] == 0
        assert (await s.launch()).status == 503
        assert (await admin(nats_server.url, namespace, "resume", "--all"))[0] == 0

        victim = s.records("ready")[0]
        code, out, err = await admin(nats_server.url, namespace, "retire", victim.id[:6])
        assert code == 0, err
        assert victim.id not in out  # only the short form is shown
        await wait_for(lambda: (r := s.store.get("echo", victim.id)) is None or r.instance.state == "retiring",
                       timeout=20, what="the instance to retire")

        code, _, _ = await admin(nats_server.url, namespace, "drain", "--all")
        assert code == 0
        await wait_for(lambda: not s.records("ready") and not s.records("starting"), timeout=30,
                       what="the warm pool to be drained")
        assert len(s.records("claimed")) == 1  # the running session goes on
        assert (await status_json(nats_server.url, namespace))["echo"]["target_source"] == "paused"


async def test_bad_admin_requests_are_clear(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    code, _, err = await admin(nats_server.url, namespace, "status")
    assert code == 1 and "no admin service answers" in err  # nothing runs for this namespace yet
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=0, max_=1), gateway=False, docker=False):
        code, _, err = await admin(nats_server.url, namespace, "scale", "nope", "3")
        assert code == 2 and "unknown_app" in err
        code, _, err = await admin(nats_server.url, namespace, "scale", "echo", "many")
        assert code == 2 and "invalid int value" in err
        code, _, err = await admin(nats_server.url, namespace, "scale", "echo", "3", "--for", "soon")
        assert code == 2 and "duration" in err
        code, _, err = await admin(nats_server.url, namespace, "pause")
        assert code == 2 and "--all" in err
        code, _, err = await admin(nats_server.url, namespace, "retire", "a" * 26)
        assert code == 2 and "unknown_instance" in err
        code, _, err = await admin(nats_server.url, namespace, "retire", "A!")
        assert code == 2 and "id" in err
    code, _, err = await admin("nats://127.0.0.1:1", namespace, "status")
    assert code == 1 and "cannot reach NATS" in err


async def test_malformed_requests_get_a_typed_error(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=0, max_=1), gateway=False, docker=False) as s:
        msg = await s.nc.request(Subjects(namespace).admin("scale"), b'{"app": "echo", "size": -1}', timeout=5)
        assert json.loads(msg.data)["type"] == "error" and json.loads(msg.data)["error"] == "malformed"
        assert msg.headers and msg.headers["Nats-Service-Error-Code"] == "400"
        assert s.hosts[0].metrics.value("swarmpool_messages_malformed_total", handler="admin.scale") == 1


async def test_admin_service_in_discovery(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    s = Subjects(namespace)
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=0, max_=1), hosts=2,
                             gateway=False, docker=False) as stack:
        inbox = stack.nc.new_inbox()
        sub = await stack.nc.subscribe(inbox)
        await stack.nc.publish(f"$SRV.PING.{s.admin_service}", b"", reply=inbox)
        pings = [json.loads((await sub.next_msg(timeout=5)).data) for _ in range(2)]  # one per host
        assert {p["name"] for p in pings} == {s.admin_service} and len({p["id"] for p in pings}) == 2
        info = json.loads((await stack.nc.request(f"$SRV.INFO.{s.admin_service}", b"", timeout=5)).data)
        subjects = {e["name"]: e["subject"] for e in info["endpoints"]}
        assert subjects == {v: s.admin(v) for v in VERBS}  # every verb of the table, lecture links' too
        assert info["metadata"]["namespace"] == namespace
        await admin(nats_server.url, namespace, "status")
        stats = [json.loads((await stack.nc.request(f"$SRV.STATS.{s.admin_service}.{p['id']}", b"",
                                                    timeout=5)).data) for p in pings]
        assert sum(e["num_requests"] for st in stats for e in st["endpoints"] if e["name"] == "status") == 1


def schedule_now(size: int) -> str:
    """A schedule entry active now (UTC), whatever the time of day."""
    now = datetime.now(timezone.utc)
    start, end = now - timedelta(minutes=5), now + timedelta(minutes=60)
    days = sorted({start.strftime("%a").lower(), now.strftime("%a").lower()})
    return f"""
[[apps.echo.schedule]]
days = {json.dumps(days)}
start = "{start:%H:%M}"
end = "{end:%H:%M}"
timezone = "UTC"
size = {size}
"""


async def test_schedule_and_scale_for(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    catalogue = echo_catalogue(size=0, max_=3, extra=schedule_now(1))
    async with running_stack(nats_server.url, namespace, catalogue, gateway=False, docker=False) as s:
        await s.wait_ready(1)  # the schedule, not pool.size (0), keeps one warm
        apps = await status_json(nats_server.url, namespace)
        assert apps["echo"]["target"] == 1 and str(apps["echo"]["target_source"]).startswith("schedule ")
        code, out, err = await admin(nats_server.url, namespace, "scale", "echo", "2", "--for", "10s")
        assert code == 0 and " until " in out, err
        apps = await status_json(nats_server.url, namespace)
        assert apps["echo"]["target"] == 2 and str(apps["echo"]["target_source"]).startswith("scale until ")
        deadline = time.monotonic() + 40
        while (apps := await status_json(nats_server.url, namespace))["echo"]["target"] != 1:
            assert time.monotonic() < deadline, apps
            await s.store.wait_changed(0.5)
        assert str(apps["echo"]["target_source"]).startswith("schedule ")


async def test_only_the_operator_may_call_it(tmp_path: Path, namespace: str, echo_image: str) -> None:
    catalogue = echo_catalogue(size=0, max_=1)
    from swarmpool.catalogue import parse

    async with EmbeddedNats(tmp_path / "state", namespaces=[namespace]) as server:
        from swarmpool.bus.wire import connect

        fn = await connect(server.url, access=server.access("functions"),
                           inbox_prefix=Subjects(namespace).inbox("functions"))
        swarm = Swarm(namespace)
        try:
            async with functions_host(fn, parse(catalogue), swarm, namespace):
                # the operator's credentials are found in up's state dir
                code, out, err = await admin(None, namespace, "status", "--json", state_dir=str(tmp_path / "state"))
                assert code == 0 and "echo" in json.loads(out)["apps"], err
                for role, allowed in (("operator", True), ("gateway", False)):
                    nc: Client = await connect(server.url, access=server.access(role),
                                               inbox_prefix=Subjects(namespace).inbox(role))
                    try:
                        try:
                            reply = await nc.request(f"$SRV.PING.{Subjects(namespace).admin_service}", b"", timeout=2)
                            seen = json.loads(reply.data)["name"] == Subjects(namespace).admin_service
                        except Exception:
                            seen = False
                        assert seen is allowed, role
                    finally:
                        await nc.close()
        finally:
            await fn.drain()
            await swarm.remove_all()
            await swarm.close()
