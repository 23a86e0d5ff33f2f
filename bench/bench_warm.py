"""Benchmark: how fast swarmpool warms and refills a pool of light instances, against the engine's own rate.

    python -m bench.bench_warm [-n 60] [--burst N] [--smoke]

In one process and one run, four rounds on this machine's swarm (the engine's twice, before and after
swarmpool's, as the load of a shared machine moves; the baseline is their mean):

- engine alone (the baseline): N echo services, each exactly as swarmpool would create it (same image,
  limits, labels, bridge, published port: `swarm/adapter.py` (services.py) with `lifecycle.instance_spec`), created
  as fast as the engine accepts them (--create-concurrency calls at once), timed from the first call
  until every one answers HTTP on its port (one task listing every 0.1 s, then GET <prefix>healthz);
- swarmpool warm: `swarmpool up` (embedded nats-server, functions, gateway) with the echo app at size 0,
  then `admin scale echo N` over the bus; timed from the request until N are ready (the gateway's
  public /status, every 0.1 s);
- swarmpool refill: --burst students click /launch/echo at once (each its own cookie-less client) and
  load the page they land on (the settle signal); timed from the first click until N are ready again.

Per round: when the k-th instance answered (engine) or was counted ready (swarmpool), k = 1..N, from the
round's start: median and p99 of those, the time of the last, and its ratio to the engine's last.
The load average is printed beside it (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import statistics
import string
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import docker

from bench.support import pct, stop_child
from swarmpool.bus.messages import ScaleRequest
from swarmpool.bus.roles import Access, credentials_path
from swarmpool.bus.wire import connect, encode
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import parse
from swarmpool.functions.lifecycle import instance_spec
from swarmpool.ids import instance_prefix, new_handle, new_instance_id
from swarmpool.natsd import free_port
from swarmpool.swarm.adapter import Swarm

POLL = 0.1


def catalogue(n: int, burst: int, start_budget: int = 0) -> str:
    """The echo app at size 0 (the bench scales it), its default probe interval, room for a refill
    (`start_budget` > 0: that many starting at once, instead of the followed budget)."""
    return f"""
[settings]
max_instances = {2 * n + burst + 10}
start_budget = {start_budget}
claim_wait = 10
per_browser_limit = 0

[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
deep_link = "page"
[apps.echo.probe]
path = "healthz"
timeout = "300s"
[apps.echo.pool]
size = 0
max = {2 * n + burst + 5}
[apps.echo.session]
unused_grace = "10m"
[apps.echo.limits]
memory = "96m"
"""


@dataclass
class Round:
    name: str
    times: list[float]  # seconds from the round's start until the k-th instance was ready
    load: tuple[float, float, float]  # load average at its end

    @property
    def last(self) -> float:
        return self.times[-1] if self.times else float("nan")


def loadavg() -> tuple[float, float, float]:
    return os.getloadavg()


# ---- the engine alone ----


def _published(task: dict[str, Any]) -> int | None:
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for port in ports:
        if port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


async def engine_round(n: int, concurrency: int, text: str) -> Round:
    """N echo services created by the adapter alone (no records, no budget), until each answers HTTP."""
    spec = parse(text, "bench-warm").apps["echo"]
    settings = parse(text, "bench-warm").settings
    namespace = "bwarm" + "".join(random.choices(string.ascii_lowercase, k=5))
    swarm = Swarm(namespace, max_threads=max(concurrency, 4))
    client = docker.from_env()
    ids = [new_instance_id() for _ in range(n)]
    answered: dict[str, float] = {}
    try:
        gate = asyncio.Semaphore(concurrency)

        async def create(instance_id: str) -> str:
            async with gate:
                return await swarm.create(instance_spec(spec, instance_id, settings, new_handle()))

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            started = time.perf_counter()
            creating = asyncio.gather(*(create(i) for i in ids))
            services: dict[str, str] = {}  # service id -> instance id
            deadline = started + 600

            async def answers(instance_id: str, port: int) -> None:
                try:
                    async with http.get(f"http://127.0.0.1:{port}{instance_prefix(instance_id)}healthz") as r:
                        if r.status == 200 and instance_id not in answered:
                            answered[instance_id] = time.perf_counter() - started
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    pass

            while len(answered) < n:
                if creating.done() and not services:
                    services = dict(zip(creating.result(), ids))
                tasks = await asyncio.to_thread(client.api.tasks, filters={"name": namespace + "-"})
                by_service = {t.get("ServiceID", ""): t for t in tasks
                              if (t.get("Status") or {}).get("State") == "running"}
                labels = {}
                for service_id, task in by_service.items():
                    spec_labels = ((task.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels") or {}
                    labels[service_id] = spec_labels.get("swarmpool.id", "") or services.get(service_id, "")
                probes = [answers(labels[s], port) for s, t in by_service.items()
                          if labels[s] and labels[s] not in answered and (port := _published(t))]
                await asyncio.gather(*probes)
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"engine alone: {len(answered)} of {n} answered within 600 s")
                await asyncio.sleep(POLL)
            await creating
        return Round(f"engine alone ({concurrency} creates at once)", sorted(answered.values()), loadavg())
    finally:
        await swarm.remove_all()
        await swarm.close()
        client.close()


# ---- swarmpool ----


@dataclass
class Up:
    url: str
    nats_url: str
    state: Path
    namespace: str


@asynccontextmanager
async def swarmpool_up(text: str, keep: bool = False) -> AsyncIterator[Up]:
    state = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    (state / "catalogue.toml").write_text(text)
    port = free_port()
    namespace = "bwup" + "".join(random.choices(string.ascii_lowercase, k=5))
    log = open(state / "up.log", "wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(state / "catalogue.toml"), "--port",
        str(port), "--state-dir", str(state / "state"), "--namespace", namespace, "--no-build",
        "--dashboard-port", "0", stdout=log, stderr=asyncio.subprocess.STDOUT)
    ok = False
    try:
        url = f"http://127.0.0.1:{port}"
        nats_url = ""
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as http:
            while True:
                if proc.returncode is not None:
                    raise RuntimeError(f"swarmpool up exited with {proc.returncode}: see {state / 'up.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"swarmpool up did not serve within 120 s: see {state / 'up.log'}")
                if not nats_url and (m := re.search(r"embedded nats-server on (\S+)", (state / "up.log").read_text())):
                    nats_url = m.group(1)
                try:
                    async with http.get(f"{url}/healthz") as r:
                        if r.status == 200 and nats_url:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        yield Up(url, nats_url, state, namespace)
        ok = True
    finally:
        await stop_child(proc, signal.SIGINT, timeout=180)  # up removes its instances on the way out
        log.close()
        if keep:
            print(f"kept {state} (up.log)", file=sys.stderr, flush=True)
        elif ok:
            shutil.rmtree(state, ignore_errors=True)  # kept (with up.log) when the run failed
        else:
            print(f"kept {state} (up.log)", file=sys.stderr, flush=True)


async def ready_count(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(f"{url}/status") as r:
            return int((await r.json())["apps"]["echo"]["ready"]) if r.status == 200 else 0
    except (aiohttp.ClientError, KeyError, ValueError):
        return 0


async def until_ready(http: aiohttp.ClientSession, url: str, n: int, started: float, since: int = 0) -> list[float]:
    """Seconds from `started` at which the ready count first reached since+1 .. n (polled every POLL)."""
    times: list[float] = []
    deadline = started + 900
    while len(times) < n - since:
        ready = await ready_count(http, url)
        now = time.perf_counter() - started
        while since + len(times) < min(ready, n):
            times.append(now)
        if time.perf_counter() > deadline:
            raise TimeoutError(f"{since + len(times)} of {n} ready within 900 s")
        await asyncio.sleep(POLL)
    return times


async def scale(up: Up, n: int) -> None:
    access = Access.load(credentials_path(up.state / "state", "operator"))
    subjects = Subjects(up.namespace)
    nc = await connect(up.nats_url, "bench-warm", access=access, inbox_prefix=subjects.inbox("operator"))
    try:
        reply = await nc.request(subjects.admin("scale"), encode(ScaleRequest(app="echo", size=n)), timeout=30)
        if b'"type":"ok"' not in reply.data:
            raise RuntimeError(f"scale refused: {reply.data[:200]!r}")
    finally:
        await nc.drain()


async def student(http: aiohttp.ClientSession, url: str) -> None:
    """One click on the student link, then the page it lands on (its load is the settle signal)."""
    async with http.get(f"{url}/launch/echo", allow_redirects=False) as r:
        await r.read()
        location = r.headers.get("Location", "")
    if r.status != 303 or not location.startswith("/i/"):
        raise RuntimeError(f"a click got {r.status} {location[:20]!r}, not a session")
    async with http.get(f"{url}{location}") as page:
        await page.read()


async def swarmpool_rounds(n: int, burst: int, text: str, keep: bool = False) -> list[Round]:
    async with swarmpool_up(text, keep) as up, AsyncExitStack() as stack:
        http = await stack.enter_async_context(aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), connector=aiohttp.TCPConnector(limit=0)))
        started = time.perf_counter()
        await scale(up, n)
        warm = Round("swarmpool warm (admin scale 0 -> N)", await until_ready(http, up.url, n, started), loadavg())
        rounds = [warm]
        if burst:
            started = time.perf_counter()
            await asyncio.gather(*(student(http, up.url) for _ in range(burst)))
            left = await ready_count(http, up.url)
            times = await until_ready(http, up.url, n, started, since=min(left, n))
            rounds.append(Round(f"swarmpool refill after {burst} clicks", times, loadavg()))
        return rounds


def table(rounds: list[Round], n: int) -> str:
    """The rows; `x engine`: each round's all-N time over the mean of the two engine rounds (the first two)."""
    base = (rounds[0].last + rounds[1].last) / 2
    lines = [f"| round (N = {n})                          | median s | p99 s | all N s | x engine | load avg 1/5/15 |",
             "|------------------------------------------|----------|-------|---------|----------|-----------------|"]
    for r in rounds:
        load = "/".join(f"{x:.1f}" for x in r.load)
        lines.append(f"| {r.name:<40} | {statistics.median(r.times):>8.1f} | {pct(r.times, 99):>5.1f} | "
                     f"{r.last:>7.1f} | {r.last / base:>8.2f} | {load:>15} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    text = catalogue(args.n, args.burst, args.start_budget)
    print(f"load average before: {'/'.join(f'{x:.1f}' for x in loadavg())}, {os.cpu_count()} cores", flush=True)
    engine = await engine_round(args.n, args.create_concurrency, text)
    print(f"{engine.name}: {args.n} answered in {engine.last:.1f} s", flush=True)
    ours = await swarmpool_rounds(args.n, args.burst, text, args.keep)
    for r in ours:
        print(f"{r.name}: {r.last:.1f} s", flush=True)
    after = await engine_round(args.n, args.create_concurrency, text)  # the machine's load may have moved
    after.name = "engine alone, again after"
    print(f"{after.name}: {args.n} answered in {after.last:.1f} s", flush=True)
    print()
    print(table([engine, after, *ours], args.n))
    print()
    print("seconds from the round's start until the k-th of N instances answered (engine) or was ready (swarmpool,"
          " the gateway's /status); refill: from the first click until N are ready again; x engine: all N"
          " over the mean of the two engine rounds' all N (before and after swarmpool's, same run).")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=60, help="instances to warm")
    parser.add_argument("--burst", type=int, default=None, help="clicks of the refill round (default: N; 0: none)")
    parser.add_argument("--create-concurrency", type=int, default=8, help="the engine round's creates at once")
    parser.add_argument("--keep", action="store_true", help="keep swarmpool's state dir and up.log")
    parser.add_argument("--start-budget", type=int, default=0,
                        help="settings.start_budget of swarmpool's rounds (default 0: the followed budget)")
    parser.add_argument("--smoke", action="store_true", help="N = 3, a burst of 2: does the bench still run (CI)")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.n, arguments.burst = 3, 2
    if arguments.burst is None:
        arguments.burst = arguments.n
    sys.exit(asyncio.run(main(arguments)))
