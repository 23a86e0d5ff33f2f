"""`swarmpool events`: the event log as JSON lines and CSV, --since, --follow; the stream's upgrade in place."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from datetime import datetime

import nats
import pytest
from nats.js import api

from swarmpool.bus.state import EVENTS_MAX_BYTES, ensure_streams
from swarmpool.bus.subjects import Subjects
from tests.integration.test_admin import NO_STATE, admin, swarmpool_cli
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker


async def events(nats_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    return await swarmpool_cli(nats_url, namespace, "events", *args)


async def test_events_json_csv_since_and_follow(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, echo_catalogue(size=1, max_=2), gateway=False, docker=False) as s:
        ready = (await s.wait_ready(1))[0]
        assert (await admin(nats_server.url, namespace, "pause", "echo"))[0] == 0
        code, out, err = await events(nats_server.url, namespace, "--json")
        assert code == 0, err
        lines = [json.loads(line) for line in out.splitlines()]
        for line in lines:
            assert {"time", "app", "event", "reason"} <= set(line)
            assert line["time"].endswith("Z") and datetime.fromisoformat(line["time"].replace("Z", "+00:00"))
        assert [line["event"] for line in lines if line["app"] == "echo"][:2] == ["created", "ready"]
        assert ready.id not in out and ready.id[:4] in out  # ids only as their short prefix
        (paused,) = [line for line in lines if line["event"] == "admin pause"]
        assert paused["by"].count("@") == 1 and "pause echo" in paused["reason"]

        code, out, _ = await events(nats_server.url, namespace, "--csv", "--app", "echo")
        assert code == 0 and out.splitlines()[0] == "time,app,event,instance,state,reason,by"

        last = time.time()
        await wait_for(lambda: time.time() > last + 5, timeout=8, what="the earlier events to age")
        resuming = time.time()
        assert (await admin(nats_server.url, namespace, "resume", "echo"))[0] == 0
        # back to just before the resume plus 4 s (the events CLI's own start, slow under load); the pause
        # is 5 s older than the resume, so it stays out
        since = math.ceil(time.time() - resuming) + 4
        code, out, _ = await events(nats_server.url, namespace, "--json", "--since", f"{since}s")
        recent = [json.loads(line)["event"] for line in out.splitlines()]
        assert "admin resume" in recent and "admin pause" not in recent and "created" not in recent[:1]

        follow = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpool.cli", "events", "--follow", "--json", "--since", "1m",
            "--nats-url", nats_server.url, "--namespace", namespace, "--state-dir", NO_STATE,
            stdout=asyncio.subprocess.PIPE)
        try:
            output = follow.stdout
            assert output is not None

            async def printed(event: str) -> None:
                while event not in json.loads(await output.readline()).get("event", ""):
                    pass

            async with asyncio.timeout(30):
                await printed("admin resume")  # following: what was logged before it started is out
                assert (await admin(nats_server.url, namespace, "drain", "echo"))[0] == 0
                await printed("admin drain")  # and what is logged afterwards comes as it happens
        finally:
            follow.terminate()
            await follow.wait()


async def test_event_log_is_upgraded_in_place(nats_server, namespace) -> None:  # type: ignore[no-untyped-def]
    s = Subjects(namespace)
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=s.events_stream, subjects=[s.instance_events_all()], max_age=7 * 86400)
        await js.publish(s.instance_event("echo", "a" * 26, "created"), b"{}")
        await ensure_streams(js, s)
        info = await js.stream_info(s.events_stream)
        assert sorted(info.config.subjects or []) == sorted([s.instance_events_all(), s.audit_all(), s.visits_all()])
        assert info.config.max_bytes == EVENTS_MAX_BYTES and info.config.discard == api.DiscardPolicy.OLD
        assert info.state.messages == 1  # kept
    finally:
        await nc.jetstream().delete_stream(s.events_stream)
        for bucket in (s.instances_bucket, s.config_bucket, s.leases_bucket):
            await nc.jetstream().delete_key_value(bucket)
        await nc.close()
