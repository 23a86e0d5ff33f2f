"""Hundreds of instances, and what 1,000 would cost: the control plane of `swarmpool up` against issue 17's goals.

Runs `swarmpool up` (embedded nats-server, real swarm) with the busybox app `swarmpool/tiny` (apps/tiny) as a
separate process, and measures at 0 records (the baseline), at N real warm instances, and at R records (N real
plus R - N "paper" records: ready records written into the bucket with no container behind them, so the
control plane holds R records while the engine runs N; the reconcile pass still lists N services):

- resident memory of the control plane: the `up` process (functions + gateway) and its nats-server;
- reconcile passes (`swarmpool_reconcile_seconds` of the functions host, read from /metrics): median, p99;
- a restarted host's mirror catch-up (opening the instance bucket's mirror: every record read), GET /metrics
  and GET /status (the scrape and the public page walk every record);
- at R records, clicks arriving at a fixed rate (100/s for 10 s: 1,000 students, each a new browser) on a pool
  of R ready records: latency p50/p99, errors (anything but a 303 to a distinct instance), control-plane CPU;
  beside it the bare NATS request/reply at the same rate on a server of its own (the floor).

Each instance publishes one host-mode port on 127.0.0.1 through the namespace's bridge (a Linux bridge holds at
most 1,024 ports) with the engine's userland proxy as this engine runs it (one docker-proxy process per
published port): what the engine pays per instance is printed too, measured as the change of docker-proxy and
containerd-shim memory (PSS) since the start (the machine is shared: other users' containers move it as well).

    python -m bench.bench_scale [-n 500] [--records 1000] [--rate 100] [--seconds 10] [--smoke]

`--smoke`: 3 real instances, 20 records, 20 clicks in 1 s: does it still run (CI). Everything it starts is
removed at the end (`up` stops its instances; leftovers are removed by this run's namespace label).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import nats

from bench.support import pct, stop_child
from swarmpool.bus.messages import Instance
from swarmpool.bus.roles import Access, credentials_path
from swarmpool.bus.wire import connect
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import new_handle, new_instance_id
from swarmpool.natsd import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "swarmpool/tiny:latest"
APP = "tiny"
GOAL_RSS_MIB = 150.0  # up (functions + gateway) + nats-server at 1,000 records
GOAL_RECONCILE_S = 1.0
GOAL_CLICK_P99_MS = 250.0
PROGRESS = re.compile(rf"pool: .*\b{APP} (\d+)/(\d+) ready, (\d+) starting, (\d+) in use")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def catalogue(records: int, parallel: int) -> str:
    """The tiny app, pool size 0 (the bench scales it), room for `records`, sessions that outlive the bench."""
    return f"""
[settings]
max_instances = {records + 20}
claim_wait = 2
reconcile_interval = "5s"  # the default
tick_interval = 1
refill_delay = 2
start_budget = {parallel}
orphan_grace = "1h"  # paper records have no service: never ghosts while the bench runs
per_browser_limit = 3

[apps.{APP}]
title = "Tiny"
image = "{IMAGE}"
build = "{ROOT}/apps/tiny/build.sh"
port = 8080
strip_prefix = true
[apps.{APP}.probe]
path = "healthz"
timeout = "600s"
interval = 0.5
[apps.{APP}.pool]
size = 0
max = {records}
max_parallel_starts = {parallel}
[apps.{APP}.session]
idle_timeout = "1h"
disconnect_grace = "1h"
max_lifetime = "2h"
unused_grace = "1h"
[apps.{APP}.limits]
memory = "32m"
cpus = 0.2
pids = 32
"""


# ---- processes and memory (/proc) ----


def status_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return out


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except FileNotFoundError:
        return ""


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (FileNotFoundError, IndexError):
        return 0.0


def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (the binary) split between the processes that map them."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def engine_side() -> tuple[int, int]:
    """(count, KiB of PSS) of the engine's per-instance helpers: docker-proxy and containerd-shim processes."""
    count = kib = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and comm(int(entry.name)) in ("docker-proxy", "containerd-shim"):
            count += 1
            kib += pss_kib(int(entry.name))
    return count, kib


@dataclass
class ControlPlane:
    up: int
    nats: int = 0

    def find_nats(self) -> None:
        for child in children(self.up):
            if comm(child) == "nats-server":
                self.nats = child

    def rss_mib(self) -> tuple[float, float]:
        """(up, nats-server) resident memory in MiB."""
        return status_kib(self.up) / 1024, status_kib(self.nats) / 1024 if self.nats else 0.0

    def cpu(self) -> float:
        return cpu_seconds(self.up) + (cpu_seconds(self.nats) if self.nats else 0.0)


# ---- what is measured at each size ----


@dataclass
class Point:
    """The measures at one size."""

    label: str
    records: int
    real: int
    up_mib: float = 0.0
    nats_mib: float = 0.0
    reconcile_s: list[float] = field(default_factory=list)
    catch_up_s: list[float] = field(default_factory=list)
    metrics_ms: list[float] = field(default_factory=list)
    status_ms: list[float] = field(default_factory=list)
    engine: tuple[int, int] = (0, 0)


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(m.group(1)) if m else None


async def reconcile_passes(http: aiohttp.ClientSession, base: str, passes: int, timeout: float) -> list[float]:
    """Durations of the next `passes` reconcile passes: the histogram's sum grows by one pass's time per count."""
    out: list[float] = []
    last: tuple[float, float] | None = None
    deadline = time.monotonic() + timeout
    while len(out) < passes and time.monotonic() < deadline:
        async with http.get(base + "/metrics") as r:
            text = await r.text()
        count, total = metric(text, "swarmpool_reconcile_seconds_count"), metric(text, "swarmpool_reconcile_seconds_sum")
        if count is not None and total is not None:
            if last is not None and count == last[0] + 1:
                out.append(total - last[1])
            last = (count, total)
        await asyncio.sleep(0.25)  # poll: a pass every reconcile_interval (5 s)
    return out


async def timed_gets(http: aiohttp.ClientSession, url: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        t = time.perf_counter()
        async with http.get(url) as r:
            await r.read()
            assert r.status == 200, f"GET {url}: {r.status}"
        out.append((time.perf_counter() - t) * 1000)
    return out


async def catch_up(url: str, access: Access, namespace: str, rounds: int) -> list[float]:
    """A restarted host's first step: open the bucket's mirror until its initial values are in (seconds)."""
    out = []
    nc = await connect(url, name="bench-scale-mirror", access=access, inbox_prefix=Subjects(namespace).inbox("functions"))
    try:
        for _ in range(rounds):
            t = time.perf_counter()
            store = await InstanceStore.open(nc, Subjects(namespace), time.time, create=False)
            out.append(time.perf_counter() - t)
            await store.close()
    finally:
        await nc.drain()
    return out


# ---- clicks at a rate ----


@dataclass
class Burst:
    ms: list[float]
    errors: int
    distinct: int
    wall: float
    cpu: float  # control-plane CPU seconds spent during the burst


async def clicks_at_rate(base: str, rate: float, seconds: float, plane: ControlPlane) -> Burst:
    """`rate` clicks per second for `seconds`, each from a new browser (no cookies), not waiting for earlier ones."""
    n = int(rate * seconds)
    ms: list[float] = []
    locations: list[str] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as http:
        async def one(at: float) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            t = time.perf_counter()
            try:
                async with http.get(base + f"/launch/{APP}", allow_redirects=False,
                                    headers={"Accept": "text/html"}) as r:
                    await r.read()
                    ms.append((time.perf_counter() - t) * 1000)
                    if r.status == 303 and r.headers.get("Location", "").startswith("/i/"):
                        locations.append(r.headers["Location"].split("/")[2])
                    else:
                        errors += 1
            except aiohttp.ClientError:
                errors += 1

        cpu0 = plane.cpu()
        t0 = time.perf_counter() + 0.2
        await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
        wall = time.perf_counter() - t0
        cpu = plane.cpu() - cpu0
    return Burst(ms, errors + (len(locations) - len(set(locations))), len(set(locations)), wall, cpu)


async def nats_floor_at_rate(state: Path, rate: float, seconds: float) -> list[float]:
    """Bare request/reply on a nats-server of its own (same binary, open mode), at the clicks' rate."""
    async with EmbeddedNats(state / "floor", auth=False) as bare:
        nc = await nats.connect(bare.url)
        try:
            async def echo(msg):  # type: ignore[no-untyped-def]
                await msg.respond(msg.data)

            await nc.subscribe("bench.floor", cb=echo)
            out: list[float] = []

            async def one(at: float) -> None:
                await asyncio.sleep(max(0.0, at - time.perf_counter()))
                t = time.perf_counter()
                await nc.request("bench.floor", b'{"app":"tiny","wait":2.0}', timeout=5)
                out.append((time.perf_counter() - t) * 1000)

            t0 = time.perf_counter() + 0.1
            await asyncio.gather(*(one(t0 + i / rate) for i in range(int(rate * seconds))))
            return out
        finally:
            await nc.drain()


# ---- the run ----


class Up:
    """`swarmpool up` as a child process, its pool progress followed from its output."""

    def __init__(self, state: Path, namespace: str, port: int) -> None:
        self.state, self.namespace, self.port = state, namespace, port
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = self.starting = self.claimed = 0
        self.up_line = asyncio.Event()
        self.tail: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(self.state / "catalogue.toml"),
            "--port", str(self.port), "--state-dir", str(self.state), "--namespace", self.namespace,
            "--dashboard-port", "0", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail = (self.tail + [line])[-20:]
            if line.startswith("swarmpool is up"):
                self.up_line.set()
            if m := PROGRESS.search(line):
                self.ready, self.starting, self.claimed = int(m.group(1)), int(m.group(3)), int(m.group(4))

    def alive(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise SystemExit(f"swarmpool up exited ({self.proc.returncode}):\n" + "\n".join(self.tail))

    async def wait_for(self, what: str, condition: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():  # type: ignore[operator]
            self.alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"{what}: not within {timeout:.0f} s (last lines:\n" + "\n".join(self.tail) + ")")
            await asyncio.sleep(0.2)

    async def admin(self, *args: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpool.cli", "admin", *args, "--namespace", self.namespace,
            "--state-dir", str(self.state), stdout=asyncio.subprocess.DEVNULL)
        if await proc.wait() != 0:
            raise SystemExit(f"swarmpool admin {' '.join(args)} failed")

    async def stop(self) -> None:
        if self.proc is not None:
            await stop_child(self.proc, signal.SIGINT, timeout=600)
        if self._reader is not None:
            self._reader.cancel()


def remove_leftovers(namespace: str, timeout: float = 120.0) -> int:
    """Services and networks of this run's namespace that its stop left behind, removed by their label (a network
    is in use until the engine has let go of the removed services' tasks: tried again until `timeout`)."""
    label = f"label=swarmpool.owner={namespace}"
    found = subprocess.run(["docker", "service", "ls", "-q", "--filter", label], capture_output=True, text=True).stdout.split()
    for chunk in range(0, len(found), 50):
        subprocess.run(["docker", "service", "rm", *found[chunk:chunk + 50]], capture_output=True)
    deadline = time.monotonic() + timeout
    while networks := subprocess.run(["docker", "network", "ls", "-q", "--filter", label],
                                     capture_output=True, text=True).stdout.split():
        found += networks
        subprocess.run(["docker", "network", "rm", *networks], capture_output=True)
        if time.monotonic() > deadline:
            print(f"networks of {namespace} still there: {' '.join(networks)}", file=sys.stderr)
            break
        time.sleep(0.5)  # poll the engine until its networks are gone (bounded by the deadline)
    return len(found)


async def paper_records(url: str, access: Access, namespace: str, count: int, remove: list[Instance] = []
                        ) -> list[Instance]:
    """`count` ready records of the app with no container behind them (never probed, never reconciled away), after
    the records of `remove` are deleted (by their ids: whatever state they reached)."""
    nc = await connect(url, name="bench-scale-paper", access=access, inbox_prefix=Subjects(namespace).inbox("functions"))
    made = []
    try:
        store = await InstanceStore.open(nc, Subjects(namespace), time.time, create=False)
        try:
            for gone in remove:
                if (found := store.get(gone.app, gone.id)) is not None:
                    await store.delete(found.instance, "bench: paper record")
            now = time.time()
            for i in range(count):
                made.append(await store.create(Instance(
                    id=new_instance_id(), app=APP, state="ready", service_id=f"paper{i}", endpoint="127.0.0.1:9",
                    created_at=now, ready_at=now + i * 1e-6, handle=new_handle())))
        finally:
            await store.close()
    finally:
        await nc.drain()
    return [v.instance for v in made]


async def paper_pool(up: Up, url: str, access: Access, count: int, size: int) -> list[Instance]:
    """`count` paper records join a paused pool (no surplus retired, nothing started), then the pool is scaled to
    `size` and resumed; returns the paper records."""
    await up.admin("pause", APP)
    made = await paper_records(url, access, up.namespace, count)
    await up.admin("scale", APP, str(size))
    await up.admin("resume", APP)
    return made


async def measure(point: Point, up: Up, plane: ControlPlane, http: aiohttp.ClientSession, url: str, access: Access,
                  passes: int) -> Point:
    base = f"http://127.0.0.1:{up.port}"
    point.reconcile_s = await reconcile_passes(http, base, passes, timeout=passes * 10 + 30)
    point.catch_up_s = await catch_up(url, access, up.namespace, 5)
    point.metrics_ms = await timed_gets(http, base + "/metrics", 20)
    point.status_ms = await timed_gets(http, base + "/status", 20)
    point.up_mib, point.nats_mib = plane.rss_mib()
    point.engine = engine_side()
    print(f"measured {point.label}: up {point.up_mib:.0f} MiB, nats-server {point.nats_mib:.0f} MiB, "
          f"{len(point.reconcile_s)} reconcile passes", file=sys.stderr)
    return point


def ok(good: bool) -> str:
    return "yes" if good else "NO"


def report(points: list[Point], burst: Burst, baseline: Burst, floor: list[float], rate: float, seconds: float,
           engine0: tuple[int, int], loads: tuple[str, str], n: int, records: int) -> None:
    print()
    print(f"control plane of `swarmpool up` (functions + gateway in one process, and its nats-server) with the "
          f"busybox app {IMAGE}; {n} real instances, {records} records ({records - n} of them with no container); "
          f"load average at start {loads[0]}, at end {loads[1]} (2 cores, shared)")
    print()
    print("| measure | " + " | ".join(p.label for p in points) + " | goal | met |")
    print("|---|" + "---|" * len(points) + "---|---|")
    last = points[-1]
    total = [p.up_mib + p.nats_mib for p in points]
    print("| RSS up (functions + gateway), MiB | " + " | ".join(f"{p.up_mib:.0f}" for p in points) + " | | |")
    print("| RSS nats-server, MiB | " + " | ".join(f"{p.nats_mib:.0f}" for p in points) + " | | |")
    print("| RSS control plane, MiB | " + " | ".join(f"{t:.0f}" for t in total)
          + f" | < {GOAL_RSS_MIB:.0f} at {records} | {ok(total[-1] < GOAL_RSS_MIB)} |")

    def spread(values: list[float], scale: float = 1.0, digits: int = 0) -> str:
        if not values:
            return "-"
        return f"{statistics.median(values) * scale:.{digits}f} / {pct(values, 99) * scale:.{digits}f}"

    print("| reconcile pass, ms (median / p99) | " + " | ".join(spread(p.reconcile_s, 1000) for p in points)
          + f" | < {GOAL_RECONCILE_S * 1000:.0f} | {ok(bool(last.reconcile_s) and pct(last.reconcile_s, 99) < GOAL_RECONCILE_S and all(p.reconcile_s for p in points))} |")
    print("| mirror catch-up (restarted host), ms (median / p99) | "
          + " | ".join(spread(p.catch_up_s, 1000) for p in points) + " | | |")
    print("| GET /metrics, ms (median / p99) | " + " | ".join(spread(p.metrics_ms, 1, 1) for p in points) + " | | |")
    print("| GET /status, ms (median / p99) | " + " | ".join(spread(p.status_ms, 1, 1) for p in points) + " | | |")
    print("| docker-proxy + containerd-shim, processes / MiB PSS (engine; all users' containers) | "
          + " | ".join(f"{p.engine[0]} / {p.engine[1] / 1024:.0f}" for p in points) + " | | |")
    print()
    clicks = int(rate * seconds)
    f50 = statistics.median(floor)
    print(f"clicks at {rate:.0f}/s for {seconds:.0f} s ({clicks} new browsers) on a pool of {records} ready records "
          f"({n} real), ms")
    print()
    print("| measure | count | p50 | p99 | max | x floor p50 | goal | met |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| NATS request/reply at the same rate (floor) | {len(floor)} | {f50:.2f} | {pct(floor, 99):.2f} | "
          f"{max(floor):.2f} | 1.0x | | |")
    b = baseline.ms
    print(f"| click -> 303, {len(b)} in 1 s on {len(b)} records (baseline) | {len(b)} | {statistics.median(b):.2f} | "
          f"{pct(b, 99):.2f} | {max(b):.2f} | {statistics.median(b) / f50:.1f}x | | {baseline.errors} errors |")
    good = burst.errors == 0 and len(burst.ms) == clicks and pct(burst.ms, 99) < GOAL_CLICK_P99_MS
    print(f"| click -> 303 | {len(burst.ms)} | {statistics.median(burst.ms):.2f} | {pct(burst.ms, 99):.2f} | "
          f"{max(burst.ms):.2f} | {statistics.median(burst.ms) / f50:.1f}x | p99 < {GOAL_CLICK_P99_MS:.0f}, "
          f"no error | {ok(good)} |")
    print()
    print(f"errors: {burst.errors} (not a 303 to an instance, or an instance handed out twice); distinct instances: "
          f"{burst.distinct}; last answer {burst.wall:.1f} s after the first click; control-plane CPU during the "
          f"clicks: {burst.cpu:.1f} s ({burst.cpu / burst.wall * 100:.0f}% of one core)")
    per = [(p.engine[1] - engine0[1]) / 1024 / p.real for p in points if p.real]
    if per:
        print(f"engine side per real instance (docker-proxy + containerd-shim PSS, change since the start): "
              f"{per[-1]:.1f} MiB")


async def run(n: int, records: int, rate: float, seconds: float, parallel: int, passes: int) -> None:
    if subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode != 0:
        subprocess.run([str(ROOT / "apps" / "tiny" / "build.sh")], check=True, stdout=sys.stderr)
    state = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    (state / "catalogue.toml").write_text(catalogue(records, parallel))
    namespace = "bs" + str(os.getpid() % 100000)
    loads = Path("/proc/loadavg").read_text().split()[:3]
    engine0 = engine_side()
    up = Up(state, namespace, free_port())
    try:
        await up.start()
        await up.wait_for("swarmpool up", up.up_line.is_set, 300)
        assert up.proc is not None
        plane = ControlPlane(up.proc.pid)
        plane.find_nats()
        access = Access.load(credentials_path(state, "functions"))
        url = access.url or "nats://127.0.0.1:4222"
        points: list[Point] = []
        async with aiohttp.ClientSession() as http:
            points.append(await measure(Point("0 records", 0, 0), up, plane, http, url, access, passes))
            # the baseline of the clicks: the same rate for one second on a pool of that many paper records
            small = int(rate)
            paper = await paper_pool(up, url, access, small, small)
            await up.wait_for(f"{small} ready records", lambda: up.ready >= small, 120)
            baseline = await clicks_at_rate(f"http://127.0.0.1:{up.port}", rate, 1.0, plane)
            started = time.monotonic()
            await up.admin("scale", APP, str(n))
            await paper_records(url, access, namespace, 0, remove=paper)
            await up.wait_for(f"{n} warm instances", lambda: up.ready >= n, 3600)
            print(f"{n} real instances warm in {time.monotonic() - started:.0f} s", file=sys.stderr)
            points.append(await measure(Point(f"{n} real", n, n), up, plane, http, url, access, passes))
            await paper_pool(up, url, access, records - n, records)
            await up.wait_for(f"{records} ready records", lambda: up.ready >= records, 120)
            points.append(await measure(Point(f"{records} records ({n} real)", records, n), up, plane, http, url,
                                        access, passes))
            burst = await clicks_at_rate(f"http://127.0.0.1:{up.port}", rate, seconds, plane)
        floor = await nats_floor_at_rate(state, rate, seconds)
        loads_end = Path("/proc/loadavg").read_text().split()[:3]
        report(points, burst, baseline, floor, rate, seconds, engine0, (" ".join(loads), " ".join(loads_end)), n,
               records)
    finally:
        await up.stop()
        left = remove_leftovers(namespace)
        if left:
            print(f"removed {left} leftover services and networks of namespace {namespace}", file=sys.stderr)
        shutil.rmtree(state, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="real instances (default 500; a bridge holds 1,024 ports)")
    parser.add_argument("--records", type=int, default=1000, help="records at the last point (default 1000)")
    parser.add_argument("--rate", type=float, default=100.0, help="clicks per second (default 100)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of clicks (default 10)")
    parser.add_argument("--parallel", type=int, default=16, help="instances starting at once while warming")
    parser.add_argument("--passes", type=int, default=8, help="reconcile passes timed at each point")
    parser.add_argument("--smoke", action="store_true", help="3 instances, 20 records, 20 clicks: does it still run")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.records, args.rate, args.seconds, args.passes = 3, 20, 20.0, 1.0, 2
    if not 0 < args.n <= args.records or args.rate * args.seconds > args.records:
        parser.error("need 0 < n <= records and rate x seconds <= records (every click gets a ready record)")
    asyncio.run(run(args.n, args.records, args.rate, args.seconds, args.parallel, args.passes))


if __name__ == "__main__":
    main()
