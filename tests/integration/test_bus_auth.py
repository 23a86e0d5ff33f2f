"""Bus roles: a nats-server with one user per role refuses anonymous clients and confines each
role to its subjects; the gateway works under its restricted user; a flood is dropped, not buffered.

These tests run their own nats-server with credentials (the session server is open), serving
one namespace of their own.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS

from swarmpool.bus.messages import (Activity, Claimed, ClaimRefused, ClaimReply, ClaimRequest, DockerEvent,
                                    InstanceEvent, Visit)
from swarmpool.bus.roles import Access
from swarmpool.bus.runtime import Context
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.wire import connect, encode
from swarmpool.bus.state import InstanceStore, ensure_event_log
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import parse
from swarmpool.gateway.context import BROWSER_COOKIE
from swarmpool.gateway.launch import end_token
from swarmpool.host import functions_host
from swarmpool.launcher import serve_gateway
from swarmpool.natsd import EmbeddedNats, free_port
from swarmpool.swarm.adapter import Swarm
from bench.students import Attendance, attend, new_browser
from bench.support import stop_child
from tests.fixtures import random_namespace, register_namespace
from tests.local_swarm import LocalSwarm
from tests.stack import echo_catalogue, wait_for

pytestmark = pytest.mark.docker

FLOOD = 200_000
RSS_GROWTH_LIMIT_MB = 30


@pytest.fixture(scope="module")
def auth_namespace() -> str:
    return register_namespace(random_namespace("a"))


@pytest.fixture(scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory, auth_namespace: str) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(tmp_path_factory.mktemp("nats-auth"), namespaces=[auth_namespace]) as s:
        yield s


class Client:
    """A raw client logged in as one role, keeping every asynchronous error the server sends it."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors

    async def violation(self, subject: str) -> str:
        wanted = subject.lower()  # nats-py lowers the server's message
        return await wait_for(lambda: next((e for e in self.errors if "permissions violation" in e.lower()
                                            and wanted in e.lower()), None), timeout=10,
                              what=f"a permissions violation on {subject}")


async def login(server: EmbeddedNats, role: str, namespace: str) -> Client:
    errors: list[str] = []

    async def on_error(err: Exception) -> None:
        errors.append(str(err))

    access = server.access(role)
    assert access is not None
    nc = await nats.connect(server.url, error_cb=on_error, inbox_prefix=Subjects(namespace).inbox(role),
                            **access.options(server.url))
    return Client(nc, errors)


def violations(log: Path, since: int) -> list[str]:
    return [line for line in log.read_text(errors="replace")[since:].splitlines() if "Violation" in line]


async def test_anonymous_and_wrong_passwords_are_refused(server: EmbeddedNats) -> None:
    for options in ({}, {"user": "swarmpool-functions", "password": "guess"}):
        with pytest.raises(nats.errors.Error, match="Authorization Violation"):
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=3, **options)  # type: ignore[arg-type]
    for role in ("functions", "gateway", "operator"):
        path = server.credentials(role)
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700


async def test_credentials_are_generated_once_and_reused(server: EmbeddedNats, tmp_path: Path) -> None:
    first = EmbeddedNats(tmp_path, namespaces=["sp"])
    async with first:
        password = Access.load(first.credentials("gateway")).password
    async with EmbeddedNats(tmp_path, namespaces=["sp"]) as second:
        assert Access.load(second.credentials("gateway")).password == password
        nc = await connect(second.url, access=second.access("operator"), inbox_prefix=Subjects("sp").inbox("operator"))
        await nc.close()


async def test_gateway_cannot_admin_write_forge_or_snoop(server: EmbeddedNats, auth_namespace: str) -> None:
    s = Subjects(auth_namespace)
    fn = await login(server, "functions", auth_namespace)
    gw = await login(server, "gateway", auth_namespace)
    try:
        store = await InstanceStore.open(fn.nc, s, time.time)  # the functions role creates the buckets
        witness: list[str] = []

        async def seen(msg: object) -> None:
            witness.append(getattr(msg, "subject"))

        for subject in (s.admin_all(), s.docker_all()):
            await fn.nc.subscribe(subject, cb=seen)
        await fn.nc.flush()

        await gw.nc.publish(s.admin("drain"), b"{}")
        await gw.violation(s.admin("drain"))
        event = DockerEvent(type="container", action="die", at=time.time(), app="echo", id="a" * 26)
        await gw.nc.publish(s.docker("container", "die"), encode(event))
        await gw.violation(s.docker("container", "die"))

        key = f"$KV.{s.instances_bucket}.echo.{'b' * 26}"
        with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
            await gw.nc.jetstream().publish(key, b"{}", timeout=1)
        await gw.violation(key)
        assert await store.fetch("echo", "b" * 26) is None
        with pytest.raises(Exception):
            await gw.nc.jetstream(timeout=1).create_key_value(bucket=f"{s.instances_bucket}x")

        await gw.nc.subscribe(f"{s.prefix}.claim.>")
        await gw.violation(f"{s.prefix}.claim.>")
        await gw.nc.subscribe(s.inbox("functions") + ".>")
        await gw.violation(s.inbox("functions"))

        # what the gateway may do still goes through
        await gw.nc.publish(s.activity("echo", "c" * 26), b"{}")
        await gw.nc.flush()
        await fn.nc.flush()
        assert witness == []  # no admin verb and no Docker event ever reached a subscriber
        await store.close()
    finally:
        await gw.nc.close()
        await fn.nc.close()


async def test_gateway_records_visits_in_the_event_log_and_forges_no_other_event(server: EmbeddedNats,
                                                                              auth_namespace: str) -> None:
    s = Subjects(auth_namespace)
    fn = await login(server, "functions", auth_namespace)
    gw = await login(server, "gateway", auth_namespace)
    op = await login(server, "operator", auth_namespace)
    try:
        await ensure_event_log(fn.nc.jetstream(), s)
        js = op.nc.jetstream()
        before = (await js.stream_info(s.events_stream)).state.last_seq
        visit = Visit(kind="click", app="echo", at=time.time(), outcome="waiting", cause="empty")
        await gw.nc.publish(s.visit("echo", "click"), encode(visit))
        forged = InstanceEvent(app="echo", id="d" * 26, event="claimed", state="claimed", at=time.time())
        await gw.nc.publish(s.instance_event("echo", "d" * 26, "claimed"), encode(forged))
        await gw.violation(s.instance_event("echo", "d" * 26, "claimed"))
        await gw.nc.publish(s.audit("drain"), b"{}")
        await gw.violation(s.audit("drain"))
        await gw.nc.flush()
        info = await wait_for(_grown(js, s.events_stream, before), timeout=10, what="the visit in the event log")
        assert info.state.last_seq == before + 1  # the visit, and nothing forged
        stored = await js.get_msg(s.events_stream, info.state.last_seq)
        assert stored.subject == s.visit("echo", "click") and msgspec.json.decode(stored.data, type=Visit) == visit
    finally:
        for client in (gw, fn, op):
            await client.nc.close()


def _grown(js: Any, stream: str, before: int) -> Any:
    async def probe() -> Any:
        info = await js.stream_info(stream)
        return info if info.state.last_seq > before else None
    return probe


async def roles_stack(stack: AsyncExitStack, server: EmbeddedNats, namespace: str,
                      catalogue: Catalogue) -> tuple[Context, NATS, int]:
    """A functions host and a gateway, each logged in as its own role: (the host's context, the gateway's
    connection, its port); `stack` removes them and the instances. The instances are local (LocalSwarm): what is
    tested is the bus under the roles, not Docker."""
    s = Subjects(namespace)
    swarm = LocalSwarm(namespace)
    stack.push_async_callback(swarm.close)
    stack.push_async_callback(swarm.remove_all)
    fn = await connect(server.url, access=server.access("functions"), inbox_prefix=s.inbox("functions"))
    stack.push_async_callback(fn.close)

    async def forget_records() -> None:
        """Once the host stopped: its records go with its instances, so the module's next test (same namespace)
        does not wait for the orphan grace to see them gone."""
        async with await InstanceStore.open(fn, s, time.time) as store:
            await store.caught_up()
            for record in store.all():
                await store.delete(record, "the test ended")

    stack.push_async_callback(forget_records)
    ctx = await stack.enter_async_context(functions_host(fn, catalogue, swarm, namespace))
    gw = await connect(server.url, access=server.access("gateway"), inbox_prefix=s.inbox("gateway"))
    stack.push_async_callback(gw.close)
    port = free_port()
    await stack.enter_async_context(serve_gateway(gw, catalogue, namespace, "127.0.0.1", port))
    return ctx, gw, port


async def only_own_ready(ctx: Context) -> bool:
    """A ready instance of this test's swarm, and no ready record an earlier test of the module left behind (its
    instances went with its swarm; the host's reconcile removes those records)."""
    ours = {service.id for service in await ctx.swarm.list_ours()}
    ready = {r.id for r in ctx.store.all() if r.state == "ready"}
    return bool(ready) and ready <= ours


async def test_gateway_routes_and_claims_under_its_restricted_user(server: EmbeddedNats, auth_namespace: str,
                                                                   echo_image: str) -> None:
    """The whole click flow with each part logged in as its role: no permission is missing."""
    log = server.state_dir / "nats-server.log"
    since = len(log.read_text(errors="replace"))
    catalogue = parse(echo_catalogue(size=1, max_=3), "test-catalogue")
    s = Subjects(auth_namespace)
    async with AsyncExitStack() as stack:
        ctx, gw, port = await roles_stack(stack, server, auth_namespace, catalogue)
        http = await stack.enter_async_context(aiohttp.ClientSession())
        await wait_for(lambda: only_own_ready(ctx), timeout=60, what="a ready instance of this test's own")
        async with http.get(f"http://127.0.0.1:{port}/launch/echo", allow_redirects=False) as r:
            assert r.status == 303, await r.text()
        async with http.get(f"http://127.0.0.1:{port}{r.headers['Location']}") as page:
            assert page.status == 200  # the route came to the gateway through its read-only KV watch

        # a flood on one subscription is dropped at its bounded queue and counted
        claimed = next(r for r in ctx.store.all() if r.state == "claimed")
        heartbeat = encode(Activity(app="echo", id=claimed.id, at=time.time(), traffic=True))
        for _ in range(20_000):
            await gw.publish(s.activity("echo", claimed.id), heartbeat)
        await gw.flush()
        await wait_for(lambda: ctx.metrics.value("swarmpool_messages_dropped_total", handler="activity.heartbeat",
                                                 reason="slow_consumer") > 0, timeout=20, what="drops to be counted")

        # the limit page's "end my sessions": the gateway asks, the claimer (functions role) retires
        cookie = r.cookies[BROWSER_COOKIE].value
        async with http.post(f"http://127.0.0.1:{port}/launch/echo", data={"token": end_token(cookie)},
                             headers={"Cookie": f"{BROWSER_COOKIE}={cookie}", "Accept": "application/json"}) as ended:
            assert ended.status == 200 and (await ended.json())["ended"] == 1
    assert violations(log, since) == []


async def test_the_queue_runs_under_the_roles_and_the_gateway_cannot_write_a_ticket(
        server: EmbeddedNats, auth_namespace: str, echo_image: str) -> None:
    """A click that finds no instance waits in line and is served, each part logged in as its role; the
    gateway may read the queue and say which pages it holds, never write a ticket (a place or a turn)."""
    log = server.state_dir / "nats-server.log"
    since = len(log.read_text(errors="replace"))
    # the students load no HTML page: the refill starts at the settle cap, shortened (settling is not tested here)
    catalogue = parse(echo_catalogue(size=1, max_=2, settle_cap=1), "test-catalogue")
    s = Subjects(auth_namespace)
    async with AsyncExitStack() as stack:
        ctx, gw, port = await roles_stack(stack, server, auth_namespace, catalogue)
        base = f"http://127.0.0.1:{port}"
        await wait_for(lambda: only_own_ready(ctx), timeout=120, what="a ready instance of this test's own")
        assert isinstance(ctx.swarm, LocalSwarm)
        ctx.swarm.hold()  # the refill waits until the second student is in line
        first = await attend(await stack.enter_async_context(new_browser()), base, "echo", Attendance("first"))
        assert first.outcome == "served" and not first.ticket
        second = Attendance("second")
        serving = asyncio.create_task(attend(await stack.enter_async_context(new_browser()), base, "echo", second))
        await wait_for(lambda: second.ticket or serving.done(), timeout=30, what="the second student in line")
        await ctx.swarm.release()
        await serving
        assert second.outcome == "served" and second.ticket and second.echoed, second
        assert violations(log, since) == []

        forger = await login(server, "gateway", auth_namespace)
        try:
            key = f"$KV.{s.queue_bucket}.echo.{'c' * 26}"
            with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError, TimeoutError)):
                await forger.nc.jetstream().publish(key, b"{}", timeout=1)
            await forger.violation(key)
        finally:
            await forger.nc.close()


async def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert match, status
    return int(match.group(1)) / 1024


async def test_a_heartbeat_flood_leaves_memory_flat_and_claims_working(server: EmbeddedNats, auth_namespace: str,
                                                                       echo_image: str, tmp_path: Path) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=3, max_=8))
    s = Subjects(auth_namespace)
    stderr = tmp_path / "functions.log"
    swarm = Swarm(auth_namespace)
    gw = await connect(server.url, access=server.access("gateway"), inbox_prefix=s.inbox("gateway"))
    with stderr.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpool.cli", "functions", "--nats-url", server.url, "--namespace",
            auth_namespace, "--catalogue", str(catalogue), "--credentials", str(server.credentials("functions")),
            stdout=asyncio.subprocess.DEVNULL, stderr=err)
    decode = msgspec.json.Decoder(ClaimReply).decode

    async def claim() -> Claimed | ClaimRefused:
        reply = decode((await gw.request(s.claim("echo"), encode(ClaimRequest(app="echo", wait=10)), timeout=15)).data)
        assert isinstance(reply, (Claimed, ClaimRefused)), reply
        return reply

    async def first_claim() -> Claimed | None:
        try:
            reply = await claim()
        except nats.errors.NoRespondersError:  # the functions host is not subscribed yet
            assert proc.returncode is None, stderr.read_text()
            return None
        return reply if isinstance(reply, Claimed) else None  # "empty": still warming up

    try:
        first = await wait_for(first_claim, timeout=60, what="a first claim")
        async with await InstanceStore.open(gw, s, time.time, create=False) as records:  # the gateway's read
            await wait_for(lambda: len([r for r in records.all("echo") if r.state == "ready"]) >= 2, timeout=120,
                           what="the pool warm again (two ready beside the claimed one)")
        before = await rss_mb(proc.pid)
        peak = before
        heartbeat = encode(Activity(app="echo", id=first.id, at=time.time(), traffic=True))
        subject = s.activity("echo", first.id)
        started = time.monotonic()
        for i in range(FLOOD):
            await gw.publish(subject, heartbeat)
            if i % 10_000 == 0:
                peak = max(peak, await rss_mb(proc.pid))
        await gw.flush()
        sent = time.monotonic() - started
        for _ in range(2):  # the host keeps up again: later claims are answered from the warm pool
            assert isinstance(await claim(), Claimed)
            peak = max(peak, await rss_mb(proc.pid))
        after = await rss_mb(proc.pid)
        print(f"\nflood of {FLOOD} heartbeats in {sent:.1f} s: functions host RSS {before:.1f} MB before, "
              f"peak {peak:.1f} MB, {after:.1f} MB after")
        assert peak - before < RSS_GROWTH_LIMIT_MB, (before, peak, after)
        assert proc.returncode is None
    finally:
        await gw.close()
        await stop_child(proc)
        await swarm.remove_all()
        await swarm.close()
    log = stderr.read_text()
    assert "dropping messages on" in log
    assert first.id not in log  # the drop is logged with a short id only


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with openssl."""
    ca, ca_key, cert, key, csr = (directory / n for n in ("ca.pem", "ca.key", "server.pem", "server.key", "s.csr"))
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for command in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=swarmpool test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "1",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, command)], check=True, capture_output=True)
    return ca, cert, key


async def test_tls_beyond_loopback_and_tls_clients(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs TLS"):
        EmbeddedNats(tmp_path / "open", host="0.0.0.0")
    ca, cert, key = _certificates(tmp_path)
    async with EmbeddedNats(tmp_path / "state", namespaces=["sp"], tls_cert=str(cert), tls_key=str(key)) as server:
        assert server.url.startswith("tls://")
        access = server.access("operator")
        assert access is not None and access.ca is None
        with pytest.raises(Exception):  # the server's certificate is not trusted without its CA
            await nats.connect(server.url, allow_reconnect=False, connect_timeout=3, **access.options(server.url))
        trusted = Access(user=access.user, password=access.password, ca=str(ca))
        nc = await connect(server.url, access=trusted, inbox_prefix=Subjects("sp").inbox("operator"))
        assert nc.is_connected
        await nc.close()
