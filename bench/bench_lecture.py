"""A lecture: N students arrive over a window against a pool smaller than the class, on `swarmpool up` or, with
`--cluster`, on `swarmpool deploy` on a 2-node swarm (tests/cluster.py: two namespaced engines; run as root).

Each student is a plain HTTP + WebSocket client (bench/students.py), not a browser: it clicks the app's link,
waits in line as a page with script does (the held connection, then the ticket URL's 303), loads the
instance's page, opens its WebSocket and sends a few messages, then leaves (closes everything) or idles
(keeps the WebSocket open until the lecture ends). "Served" is when the instance answered the student's page.

Prints time to served (p50, p99, max; all students and those who waited in line), queue order violations
(turns handed out while an earlier place in line still waited, read from the queue bucket, and students served
directly while an earlier clicker still waited), the refill rate against the engine's own rate for the same
image measured in the same run (services created 8 at a time until their containers say ready), the control
plane's memory and CPU (`up`: functions + gateway, and its nats-server; the stack: each service's containers),
and what is left at the end.

    python -m bench.bench_lecture [--students 200] [--pool 60] [--window 60] [--leave 0.5] [--cluster] [--smoke]

`--cluster`: the 2-node swarm is built, the echo and control images loaded into both engines, the engine
baseline measured on it (services spread over both nodes), the control plane deployed (`swarmpool deploy`: 3
NATS servers, 2 function hosts, a gateway on the manager), and the students reach the gateway at the manager's
namespace address (10.233.0.2, which the swarm's bridge gives this host). The bus is read from inside a function
host (bench/lecture_watch.py), where NATS is reachable. Everything is removed afterwards.

`--smoke`: 6 students on a pool of 2 over 2 s, so CI sees the bench still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import docker

from bench.lecture_watch import Watch
from bench.students import Attendance, attend, new_browser
from bench.support import pct, stop_child
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.roles import Access, credentials_path
from swarmpool.bus.wire import connect
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import free_port

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "swarmpool/echo:latest"
ENGINE_BATCH = 8  # services the engine baseline creates at once (as the issue measured it)
CLUSTER_PORT = 18432  # the stack's gateway, published on the manager's namespace address


def catalogue(students: int, pool: int, cluster: bool = False) -> str:
    # on the stack the image is loaded into both engines beforehand (no build), and ready is the probe's path alone
    build = "" if cluster else f'build = "{ROOT}/apps/echo/build.sh"'
    marker = "" if cluster else 'log_marker = "echo ready"'
    return f"""
[settings]
max_instances = {students + pool + 10}
tick_interval = 0.5
reconcile_interval = 2
heartbeat_interval = 1
[apps.echo]
title = "Echo"
image = "{IMAGE}"
{build}
port = 8888
deep_link = "hello"
[apps.echo.probe]
path = "healthz"
{marker}
timeout = "600s"
interval = 0.2
[apps.echo.pool]
size = {pool}
max = {students + pool}
[apps.echo.session]
disconnect_grace = "5s"
idle_timeout = "30m"
[apps.echo.limits]
memory = "96m"
"""


@dataclass
class Usage:
    """Peak memory and CPU seconds of the control plane's processes, summed per row (one row: several pids)."""

    pids: dict[str, list[int]]
    peak_mb: dict[str, float] = field(default_factory=dict)
    cpu_start: dict[str, float] = field(default_factory=dict)
    cpu_end: dict[str, float] = field(default_factory=dict)

    def sample(self) -> None:
        for name, pids in self.pids.items():
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), sum(rss_mb(pid) for pid in pids))

    def cpu(self, into: dict[str, float]) -> None:
        for name, pids in self.pids.items():
            into[name] = sum(cpu_seconds(pid) for pid in pids)


def rss_mb(pid: int) -> float:
    try:
        match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    except OSError:
        return 0.0
    return int(match.group(1)) / 1024 if match else 0.0


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (a container's processes: the engines share this host's pid namespace)."""
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children(tree[-1])
    return tree


def engine_rate(client: docker.DockerClient, engines: list[docker.DockerClient], count: int,
                label: str) -> tuple[float, float]:
    """The engine's own rate for the image: `count` bare services created ENGINE_BATCH at a time through `client`,
    timed until each container's log says ready (on whichever of `engines` runs it). (services per second,
    seconds); every service removed after."""
    names = [f"{label}-{i}" for i in range(count)]
    started = time.monotonic()
    try:
        pending = list(names)
        live: list[str] = []
        while pending or live:
            while pending and len(live) < ENGINE_BATCH:
                name = pending.pop(0)
                client.services.create(IMAGE, name=name, labels={"swarmpool.bench": label},
                                       resources=docker.types.Resources(mem_limit=96 * 1024**2))
                live.append(name)
            for name in list(live):
                if any(_answers(engine, name) for engine in engines):
                    live.remove(name)
            time.sleep(0.1)
        return count / (time.monotonic() - started), time.monotonic() - started
    finally:
        for service in client.services.list(filters={"label": f"swarmpool.bench={label}"}):
            service.remove()


def _answers(client: docker.DockerClient, name: str) -> bool:
    for container in client.containers.list(filters={"label": f"com.docker.swarm.service.name={name}"}):
        if b"echo ready" in container.logs(tail=20):
            return True
    return False


def services_left(client: docker.DockerClient, label: str) -> int:
    return len(client.services.list(filters={"label": f"swarmpool.owner={label}"}))


@dataclass
class Stage:
    """Where the lecture runs: the gateway students reach, the bus as the bench sees it, the control plane."""

    kind: str  # "up" or "the 2-node stack"
    base: str
    watch: Callable[[], Watch]  # the latest snapshot
    usage: Usage
    engine_per_s: float
    left: int = -1  # services of the namespace after the control plane stopped (set when the stage is left)
    unserved: int = 0  # students not served (set when the lecture ended): the stack's logs are kept then


@asynccontextmanager
async def on_up(args: argparse.Namespace, namespace: str) -> AsyncIterator[Stage]:
    """`swarmpool up` with the echo app, its pool warm; stopped (Ctrl-C) afterwards."""
    state = Path(tempfile.mkdtemp(prefix="bench-lecture-"))
    (state / "catalogue.toml").write_text(catalogue(args.students, args.pool))
    port = free_port()
    client = docker.from_env()
    engine_per_s, engine_s = engine_rate(client, [client], args.engine, f"{namespace}-engine")
    print(f"engine baseline: {args.engine} {IMAGE} services in {engine_s:.1f} s", file=sys.stderr)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(state / "catalogue.toml"),
        "--port", str(port), "--state-dir", str(state), "--namespace", namespace, "--dashboard-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    lines: list[str] = []
    nats_url: list[str] = []

    async def follow() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            lines.append(line)
            if m := re.search(r"embedded nats-server on (\S+)", line):
                nats_url.append(m.group(1))

    reader = asyncio.create_task(follow())
    stage: Stage | None = None
    try:
        async with asyncio.timeout(args.warm_timeout):
            while not nats_url or not any("swarmpool is up" in line for line in lines):
                if proc.returncode is not None:
                    raise SystemExit("swarmpool up exited early:\n" + "".join(lines[-20:]))
                await asyncio.sleep(0.2)
        s = Subjects(namespace)
        nc = await connect(nats_url[0], access=Access.load(credentials_path(state, "gateway")),
                           inbox_prefix=s.inbox("gateway"))
        store = await InstanceStore.open(nc, s, time.time, create=False)
        tickets = await TicketStore.open(nc, s, create=False)
        watch = Watch()
        watch.follow(tickets)
        usage = Usage({"functions + gateway (up)": [proc.pid],
                       **{f"nats-server (pid {c})": [c] for c in children(proc.pid)}})
        stage = Stage("up", f"http://127.0.0.1:{port}", lambda: watch.snapshot(store, tickets), usage, engine_per_s)
        try:
            yield stage
        finally:
            await tickets.close()
            await store.close()
            await nc.close()
    finally:
        await stop_child(proc, signal.SIGINT, timeout=300)
        reader.cancel()
        shutil.rmtree(state, ignore_errors=True)
        if stage is not None:
            stage.left = services_left(client, namespace)
        client.close()


class InsideWatch:
    """bench/lecture_watch.py run in a function host of the stack (NATS is reachable only there); its latest
    snapshot, read from the exec's output by a thread."""

    def __init__(self, client: docker.DockerClient, stack: str, seconds: float) -> None:
        hosts = client.containers.list(filters={"label": f"com.docker.swarm.service.name={stack}_functions"})
        assert hosts, f"no function host of {stack} runs"
        source = (Path(__file__).parent / "lecture_watch.py").read_text()
        exec_id = client.api.exec_create(hosts[0].id, ["python3", "-c", source, stack, str(seconds)])["Id"]
        self._output = client.api.exec_start(exec_id, stream=True)
        self.latest = Watch()
        self.lines: list[str] = []  # what was not a snapshot (an error's trace, to show if no snapshot came)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        pending = b""
        for chunk in self._output:
            pending += chunk
            *complete, pending = pending.split(b"\n")
            for raw in complete:
                line = raw.decode(errors="replace")
                try:
                    self.latest = Watch.parse(line)
                except (ValueError, TypeError):
                    self.lines = [*self.lines[-20:], line]


def stack_processes(engines: list[docker.DockerClient], stack: str) -> dict[str, list[int]]:
    """Per service of the stack, named with its containers ("functions (2 containers)"): the processes of all of
    them."""
    found: dict[str, list[list[int]]] = {}
    for engine in engines:
        for container in engine.containers.list(filters={"label": f"com.docker.stack.namespace={stack}"}):
            service = container.labels["com.docker.swarm.service.name"].removeprefix(f"{stack}_")
            found.setdefault(service, []).append(process_tree(container.attrs["State"]["Pid"]))
    return {f"{service} ({len(trees)} container{'s' * (len(trees) > 1)})": [pid for tree in trees for pid in tree]
            for service, trees in sorted(found.items())}


def keep_logs(engines: list[docker.DockerClient], stack: str, into: Path) -> None:
    """The stack's control containers' logs on every node (ids in them are short prefixes), written into `into`
    before undeploy. Container logs, not service logs: `docker service logs` of a replicated service can hang."""
    into.mkdir(parents=True, exist_ok=True)
    for engine in engines:
        for container in engine.containers.list(filters={"label": f"com.docker.stack.namespace={stack}"}):
            try:
                text = container.logs(stdout=True, stderr=True, timestamps=True)
            except (docker.errors.DockerException, OSError) as err:
                text = f"no log: {err}".encode()
            (into / f"{container.name}.log").write_bytes(text)
    print(f"the stack's logs: {into}", file=sys.stderr)


@asynccontextmanager
async def on_cluster(args: argparse.Namespace, namespace: str) -> AsyncIterator[Stage]:
    """`swarmpool deploy` on the 2-node swarm of tests/cluster.py, its pool warm; everything removed afterwards."""
    from swarmpool.deploy import control_image
    from tests.cluster import build_image, deployed_stack, two_node_swarm

    build_image("apps/echo/build.sh")
    build_image("apps/control/build.sh")  # the stack runs this checkout
    home = Path(tempfile.mkdtemp(prefix="bench-lecture-cluster-"))
    (home / "catalogue.toml").write_text(catalogue(args.students, args.pool, cluster=True))
    images = [control_image(), IMAGE]
    try:
        with two_node_swarm(images, images) as cluster:
            manager, worker = cluster.manager.client(), cluster.worker.client()
            stage: Stage | None = None
            try:
                engine_per_s, engine_s = engine_rate(manager, [manager, worker], args.engine, f"{namespace}-engine")
                print(f"engine baseline (2 nodes): {args.engine} {IMAGE} services in {engine_s:.1f} s", file=sys.stderr)
                with deployed_stack(cluster, home / "catalogue.toml", namespace, CLUSTER_PORT, home / "state") as base:
                    watch = InsideWatch(manager, namespace, args.warm_timeout + args.lecture_timeout)
                    usage = Usage(stack_processes([manager, worker], namespace))
                    stage = Stage("the 2-node stack", base, lambda: watch.latest, usage, engine_per_s)
                    try:
                        yield stage
                    finally:
                        if watch.lines and not watch.latest.records:
                            print("the bus watch said:\n" + "\n".join(watch.lines), file=sys.stderr)
                        if stage.unserved or args.keep_logs:
                            keep_logs([manager, worker], namespace,
                                      Path(args.keep_logs or tempfile.mkdtemp(prefix="bench-lecture-logs-")))
                if stage is not None:
                    stage.left = services_left(manager, namespace)
            finally:
                manager.close()
                worker.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


async def student(base: str, me: Attendance, at: float, leave: bool, interact: int,
                  end: asyncio.Event) -> Attendance:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    async with new_browser() as http:
        try:
            await attend(http, base, "echo", me)
            if me.outcome != "served":
                return me
            async with http.ws_connect(f"{base}/i/{me.instance}/ws") as ws:
                for i in range(interact):
                    await ws.send_str(f"cell {i}")
                    await ws.receive_str(timeout=30)
                if not leave:
                    await end.wait()  # idles with its socket open until the lecture ends
        except (aiohttp.ClientError, TimeoutError) as err:
            me.outcome = me.outcome if me.outcome == "served" else f"error: {type(err).__name__}"
    return me


async def lecture(args: argparse.Namespace) -> None:
    namespace = "lect" + str(os.getpid() % 10000)
    rng = random.Random(args.seed)
    where = on_cluster if args.cluster else on_up
    async with where(args, namespace) as stage:
        warm_started = time.monotonic()
        async with asyncio.timeout(args.warm_timeout):
            while stage.watch().records.get("ready", 0) < args.pool:
                await asyncio.sleep(0.2)
        warm_s = time.monotonic() - warm_started
        print(f"warm pool of {args.pool} in {warm_s:.1f} s (after {stage.kind} said it was up)", file=sys.stderr)

        usage = stage.usage
        usage.cpu(usage.cpu_start)
        end = asyncio.Event()
        began = time.monotonic()
        offsets = sorted(rng.uniform(0, args.window) for _ in range(args.students))
        students = [Attendance(f"s{i}") for i in range(args.students)]
        tasks = [asyncio.create_task(student(stage.base, me, began + at, rng.random() < args.leave, args.interact,
                                             end))
                 for me, at in zip(students, offsets)]
        sampling = True

        async def sample() -> None:
            while sampling:
                usage.sample()
                await asyncio.sleep(0.5)
        sampler = asyncio.create_task(sample())
        async with asyncio.timeout(args.lecture_timeout):
            while not all(me.outcome for me in students):
                await asyncio.sleep(0.2)
        lecture_s = time.monotonic() - began
        stage.unserved = sum(me.outcome != "served" for me in students)
        usage.cpu(usage.cpu_end)
        sampling = False
        await sampler
        if args.cluster:  # the watch inside prints every half second: one more, taken after the last student
            seen = stage.watch()
            async with asyncio.timeout(10):
                while stage.watch() is seen:
                    await asyncio.sleep(0.1)
        watch = stage.watch()
        end.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        report(args, stage, students, watch, lecture_s, warm_s)  # before the teardown: it must not lose the table
    print(f"| services left after {'`up` stopped' if stage.kind == 'up' else '`swarmpool undeploy`'} | {stage.left} |")
    times = [(me.served_at or 0.0) - me.clicked_at for me in students if me.outcome == "served" and me.served_at]
    print(f"(median time to served {statistics.median(times) if times else float('nan'):.2f} s)")


def report(args: argparse.Namespace, stage: Stage, students: list[Attendance], watch: Watch, lecture_s: float,
           warm_s: float) -> None:
    usage, engine_per_s = stage.usage, stage.engine_per_s
    served = [me for me in students if me.outcome == "served" and me.served_at is not None]
    waited = [me for me in served if me.ticket]
    times = [(me.served_at or 0.0) - me.clicked_at for me in served]
    waits = [(me.served_at or 0.0) - me.clicked_at for me in waited]
    # a student served at once while an earlier clicker still waited in line
    bypasses = sum(1 for d in served if not d.ticket for q in waited
                   if q.clicked_at < d.clicked_at and (q.served_at or 0.0) > (d.served_at or 0.0))
    first_wait = min((me.clicked_at for me in waited), default=0.0)
    last_served = max((me.served_at or 0.0 for me in waited), default=0.0)
    refill = len(waited) / (last_served - first_wait) if waited and last_served > first_wait else float("nan")
    nodes = ", on 2 nodes" if args.cluster else ""
    outcomes: dict[str, int] = {}
    for me in students:
        outcomes[me.outcome] = outcomes.get(me.outcome, 0) + 1

    def ms(values: list[float], p: float) -> str:
        return f"{pct(values, p):8.2f}" if values else "       -"

    print(f"\n| lecture on {stage.kind}: {args.students} students over {args.window:.0f} s, pool {args.pool}, "
          f"{args.leave:.0%} leave after {args.interact} messages, the others idle | value |")
    print("|---|---|")
    print(f"| served (instance answered the page) | {len(served)} of {args.students} "
          f"({', '.join(f'{k} {v}' for k, v in sorted(outcomes.items()))}) |")
    print(f"| time to served, all: p50 / p99 / max (s) | {ms(times, 50)} / {ms(times, 99)} / "
          f"{max(times, default=float('nan')):.2f} |")
    print(f"| time to served, waited in line ({len(waited)}): p50 / p99 / max (s) | {ms(waits, 50)} / {ms(waits, 99)} / "
          f"{max(waits, default=float('nan')):.2f} |")
    print(f"| queue order violations: turns out of line / served directly past an earlier clicker | "
          f"{watch.violations} of {watch.turns} / {bypasses} |")
    print(f"| longest line | {watch.peak_queue} |")
    print(f"| refill rate while students waited (served from the line per s) | {refill:.2f} |")
    print(f"| engine's own rate ({args.engine} services, {ENGINE_BATCH} at a time, until ready{nodes}) per s | "
          f"{engine_per_s:.2f} |")
    print(f"| refill / engine | {refill / engine_per_s:.2f}x |")
    for name in usage.pids:
        cpu = usage.cpu_end.get(name, 0.0) - usage.cpu_start.get(name, 0.0)
        print(f"| {name}: peak RSS (MB) / CPU (s, % of one core) | {usage.peak_mb.get(name, 0.0):.0f} / "
              f"{cpu:.1f}, {100 * cpu / lecture_s:.0f}% |")
    print(f"| lecture took (s); warm-up of the pool (s) | {lecture_s:.1f}; {warm_s:.1f} |")
    print(f"| at the end: records by state; still in line | "
          f"{', '.join(f'{k} {v}' for k, v in watch.records.items())}; {watch.queued} |")
    for me in students:  # the instance's first 4 characters, as the logs name it
        if me.outcome != "served":
            print(f"not served: {me.name} {me.outcome} (instance {me.instance[:4] or '-'}, ticket "
                  f"{'yes' if me.ticket else 'no'}, last status {me.status})", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--students", type=int, default=200)
    parser.add_argument("--pool", type=int, default=60)
    parser.add_argument("--window", type=float, default=60.0, help="seconds over which the students arrive")
    parser.add_argument("--leave", type=float, default=0.5, help="share of students who leave after interacting")
    parser.add_argument("--interact", type=int, default=3, help="WebSocket messages each student sends")
    parser.add_argument("--engine", type=int, default=16, help="services of the engine baseline")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--warm-timeout", type=float, default=1200.0)
    parser.add_argument("--lecture-timeout", type=float, default=3600.0)
    parser.add_argument("--cluster", action="store_true",
                        help="on `swarmpool deploy` on a 2-node swarm of namespaced engines (tests/cluster.py; root)")
    parser.add_argument("--keep-logs", metavar="DIR", help="--cluster: write the stack's logs into DIR (they are "
                        "kept in a temporary directory anyway when a student was not served)")
    parser.add_argument("--smoke", action="store_true", help="6 students, a pool of 2, over 2 s")
    args = parser.parse_args()
    if args.smoke:
        args.students, args.pool, args.window, args.engine = 6, 2, 2.0, 2
    asyncio.run(lecture(args))


if __name__ == "__main__":
    main()
