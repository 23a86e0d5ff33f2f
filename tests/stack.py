"""The whole swarmpool, started for real in the test process: functions hosts + gateway.

Real nats-server (session fixture), real gateway on a loopback port, and the real Docker swarm, or, with
`docker=False` where Docker is not what a test proves, `LocalSwarm` (echo instances in the test process).
Everything it creates is labelled with a fresh namespace and removed by label afterwards.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import nats
from nats.aio.client import Client as NATS
from nats.js import api

from swarmpool.bus.messages import Instance
from swarmpool.bus.runtime import Context
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.swarm.adapter import Swarm
from tests.local_swarm import LocalSwarm
from swarmpool.catalogue import parse
from swarmpool.host import functions_host
from swarmpool.launcher import serve_gateway
from swarmpool.natsd import free_port

from bench.support import echo_catalogue  # noqa: F401  (re-exported: one home for benches and tests)
from bench.support import stop_child
from tests.fixtures import wait_for  # noqa: F401  (re-exported: tests import it with the stack)


async def cli_process(stack: AsyncExitStack, *args: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """`python -m swarmpool.cli ARGS` as a real process whose output lines are collected; on the
    stack's exit it is interrupted like Ctrl-C (then killed after 60 s) unless it already ended."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "swarmpool.cli", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode())

    reader = asyncio.create_task(read())

    async def stop() -> None:
        await stop_child(proc, signal.SIGINT, timeout=60)
        await reader

    stack.push_async_callback(stop)
    return proc, lines


@dataclass
class Stack:
    namespace: str
    catalogue: Catalogue
    nc: NATS
    store: InstanceStore  # the test's own mirror of the records
    swarm: Swarm | LocalSwarm
    url: str
    http: aiohttp.ClientSession
    hosts: list[Context] = field(default_factory=list)

    def records(self, state: str | None = None) -> list[Instance]:
        return [r for r in self.store.all() if state is None or r.state == state]

    async def wait_ready(self, n: int, timeout: float = 120) -> list[Instance]:
        return await wait_for(lambda: (r := self.records("ready")) and len(r) >= n and r,
                              timeout=timeout, what=f"{n} ready instances")

    async def launch(self, app: str = "echo") -> aiohttp.ClientResponse:
        async with self.http.get(f"{self.url}/launch/{app}", allow_redirects=False) as response:
            await response.read()
            return response


@asynccontextmanager
async def running_stack(nats_url: str, namespace: str, catalogue_text: str, *, hosts: int = 1,
                        gateway: bool = True, docker: bool = True) -> AsyncIterator[Stack]:
    catalogue = parse(catalogue_text, "test-catalogue")
    async with AsyncExitStack() as stack:
        swarm: Swarm | LocalSwarm = Swarm(namespace) if docker else LocalSwarm(namespace)
        stack.push_async_callback(swarm.close)
        stack.push_async_callback(swarm.remove_all)  # runs first on exit: nothing left behind
        nc = await nats.connect(nats_url)
        stack.push_async_callback(nc.drain)
        store = await stack.enter_async_context(await InstanceStore.open(nc, Subjects(namespace), time.time))
        contexts = []
        for i in range(hosts):
            host_nc = await nats.connect(nats_url)  # each host its own connection, like separate processes
            stack.push_async_callback(host_nc.drain)
            contexts.append(await stack.enter_async_context(
                functions_host(host_nc, catalogue, swarm, namespace, host=f"host{i}")))
        port = free_port()
        if gateway:
            await stack.enter_async_context(serve_gateway(nc, catalogue, namespace, "127.0.0.1", port))
        http = aiohttp.ClientSession()
        stack.push_async_callback(http.close)
        yield Stack(namespace=namespace, catalogue=catalogue, nc=nc, store=store, swarm=swarm,
                    url=f"http://127.0.0.1:{port}", http=http, hosts=contexts)


async def claimed_in_log(nc: NATS, namespace: str) -> Counter[str]:
    """How often the event log says each instance was claimed (every event so far, read in order)."""
    subjects = Subjects(namespace)
    js = nc.jetstream()
    last = (await js.stream_info(subjects.events_stream)).state.last_seq
    seen: Counter[str] = Counter()
    instance_events = subjects.instance_events_all().removesuffix(">")
    # the whole log (visits and commands too), read up to its last message whatever that is: a consumer
    # filtered to instance events never reaches a last message that is a visit, its num_pending can read 0
    # while writes are under way, and a pause in delivery under load is no end of the log
    sub = await js.subscribe(f"{subjects.prefix}.>", stream=subjects.events_stream, ordered_consumer=True,
                             deliver_policy=api.DeliverPolicy.ALL)
    try:
        while last:
            msg = await sub.next_msg(timeout=30)
            if msg.subject.startswith(instance_events) and msg.subject.endswith(".claimed"):
                seen[msg.subject.split(".")[-2]] += 1
            if msg.metadata.sequence.stream >= last:
                break
    finally:
        await sub.unsubscribe()
    return seen


async def claims_logged(nc: NATS, namespace: str, ids: Collection[str], timeout: float = 30) -> Counter[str]:
    """The event log's claims (`claimed_in_log`) once it holds one for each of `ids`: an event is published
    without waiting for the log, so it may be stored a moment after its claim was answered."""
    async def probe() -> Counter[str] | None:
        claims = await claimed_in_log(nc, namespace)
        return claims if set(ids) <= set(claims) else None

    return await wait_for(probe, timeout=timeout, interval=0.2,
                          what=f"a claimed event in the log for each of the {len(set(ids))} instances handed out")
