"""Click -> 303 latency against a warm pool, beside a bare NATS request/reply as the floor.

Runs `swarmpool up` (embedded nats-server, real swarm, echo app) as a separate process, waits
for a warm pool of N, then fires N clicks at once (burst) and, after refill, N clicks one after
another (sequential); prints p50/p99/max, the time until the pool is full again, and the NATS
round trip on a bare local nats-server measured in the same run. With --stack it then deploys the control plane on this
machine's single-node swarm (`swarmpool deploy`: NATS, several function hosts and a gateway, each
its own process, so both cores work) and prints the same rounds through the deployed gateway.

    python -m bench.bench_claim [-n 100] [--stack] [--smoke]

`--smoke`: a pool of 3 and 20 floor round trips, so CI sees the bench still runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats

from bench.support import pct, stop_child
from swarmpool.natsd import EmbeddedNats, free_port

ROOT = Path(__file__).resolve().parent.parent


def catalogue(n: int, refill: bool = True) -> str:
    return f"""
[settings]
max_instances = {n * 3 + 10}
claim_wait = 5
[apps.echo]
image = "swarmpool/echo:latest"
build = "{ROOT}/apps/echo/build.sh"
port = 8888
[apps.echo.probe]
path = "healthz"
timeout = "300s"
interval = 0.2
[apps.echo.pool]
size = {n}
max = {n * 3 if refill else n}
max_parallel_starts = 12
[apps.echo.limits]
memory = "96m"
"""


def row(name: str, ms: list[float], floor: float) -> str:
    p50 = statistics.median(ms)
    return (f"| {name:<34} | {len(ms):>5} | {p50:>8.2f} | {pct(ms, 99):>8.2f} | {max(ms):>8.2f} | "
            f"{p50 / floor:>7.1f}x |")


async def nats_floor(url: str, rounds: int) -> list[float]:
    nc = await nats.connect(url)
    try:
        async def echo(msg):  # type: ignore[no-untyped-def]
            await msg.respond(msg.data)

        await nc.subscribe("bench.floor", cb=echo)
        out = []
        for _ in range(rounds):
            t = time.perf_counter()
            await nc.request("bench.floor", b'{"app":"echo","wait":2.0}', timeout=5)
            out.append((time.perf_counter() - t) * 1000)
        return out
    finally:
        await nc.drain()


async def click(http: aiohttp.ClientSession, url: str) -> tuple[float, int, str]:
    t = time.perf_counter()
    async with http.get(url, allow_redirects=False) as r:
        await r.read()
        return (time.perf_counter() - t) * 1000, r.status, r.headers.get("Location", "")


Clicks = list[tuple[float, int, str]]


@dataclass
class Rounds:
    sequential: Clicks
    burst: Clicks
    burst_wall: float  # seconds from the first click of the burst to the last answer
    refill_seq: float | None  # seconds until the pool was full again (None: no refill)
    refill_burst: float | None


async def rounds(port: int, n: int, no_refill: bool, full_again: Callable[[float], Awaitable[float]]) -> Rounds:
    """Sequential clicks first (latency of one click), then a burst (many students at once);
    `full_again(since)` waits until the pool is full again and says how many seconds after `since`."""
    base = f"http://127.0.0.1:{port}/launch/echo"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await click(http, f"http://127.0.0.1:{port}/healthz")
        seq_n = n // 2 if no_refill else n
        burst_n = n - seq_n if no_refill else n
        sequential = [await click(http, base) for _ in range(seq_n)]
        refill_seq = None if no_refill else await full_again(time.perf_counter())
        t0 = time.perf_counter()
        burst = await asyncio.gather(*(click(http, base) for _ in range(burst_n)))
        burst_done = time.perf_counter()
        refill_burst = None if no_refill else await full_again(burst_done)
    for name, results in (("burst", burst), ("sequential", sequential)):
        ids = [loc.split("/")[2] for _, status, loc in results if status == 303]
        assert len(ids) == len(results) == len(set(ids)), f"{name}: {len(ids)} claims, {len(set(ids))} distinct"
    return Rounds(sequential, list(burst), burst_done - t0, refill_seq, refill_burst)


def table(title: str, floor: list[float], r: Rounds, floor_note: str = "NATS request/reply (floor)") -> None:
    f50 = statistics.median(floor)
    print()
    print(title)
    print("| measurement                        | count |      p50 |      p99 |      max |   ratio |")
    print("|------------------------------------|-------|----------|----------|----------|---------|")
    print(row(floor_note, floor, f50))
    print(row("click, sequential", [ms for ms, _, _ in r.sequential], f50))
    print(row(f"click, {len(r.burst)} at once", [ms for ms, _, _ in r.burst], f50))
    print(f"| {'whole burst of ' + str(len(r.burst)):<34} |     1 | {r.burst_wall * 1000:>8.1f} |          |"
          f"          |         |")
    print()
    if r.refill_seq is not None and r.refill_burst is not None:
        print(f"pool full again: {r.refill_seq:.1f} s after the sequential run, {r.refill_burst:.1f} s after the burst")
    else:
        print("no refill (--no-refill: pool max = n), so no container starts compete with the clicks")


async def single_process(n: int, no_refill: bool, floor_rounds: int = 200) -> tuple[list[float], Rounds]:
    """`swarmpool up` as a process: the NATS floor on its embedded server, and the click rounds."""
    state = Path(tempfile.mkdtemp(prefix="bench-claim-"))
    (state / "catalogue.toml").write_text(catalogue(n, refill=not no_refill))
    port = free_port()
    namespace = "bench" + str(os.getpid() % 10000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(state / "catalogue.toml"),
        "--port", str(port), "--state-dir", str(state), "--namespace", namespace, "--dashboard-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    ready = re.compile(rf"echo (\d+)/{n} ready")
    full_at: list[float] = []

    async def follow() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            if (m := ready.search(line)) and int(m.group(1)) >= n:
                full_at.append(time.perf_counter())

    async def full_again(since: float) -> float:
        """Seconds from `since` until the progress line last showed the pool full again."""
        while not full_at:
            await asyncio.sleep(0.05)
        full = full_at[-1]
        full_at.clear()
        return max(0.0, full - since)

    reader = asyncio.create_task(follow())
    try:
        started = time.perf_counter()
        while not full_at:
            if proc.returncode is not None:
                raise SystemExit("swarmpool up exited early")
            await asyncio.sleep(0.2)
        print(f"single process: warm pool of {n} ready in {full_at[-1] - started:.1f} s", file=sys.stderr)
        # the same nats-server binary, in the open mode: up's own server admits only its roles
        async with EmbeddedNats(state / "floor", auth=False) as bare:
            floor = await nats_floor(bare.url, floor_rounds)
        full_at.clear()
        return floor, await rounds(port, n, no_refill, full_again)
    finally:
        await stop_child(proc, signal.SIGINT, timeout=120)
        reader.cancel()
        shutil.rmtree(state, ignore_errors=True)


async def swarmpool_command(*args: str, timeout: float) -> None:
    """Run one `swarmpool` command to its end, its output on stderr; a failure ends the benchmark."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "swarmpool.cli", *args, stdout=sys.stderr)
    try:
        async with asyncio.timeout(timeout):
            code = await proc.wait()
    except TimeoutError:
        proc.kill()
        raise SystemExit(f"swarmpool {args[0]} did not finish within {timeout:.0f} s") from None
    except asyncio.CancelledError:  # Ctrl-C: the command goes with us (undeploy runs next)
        proc.kill()
        await proc.wait()
        raise
    if code != 0:
        raise SystemExit(f"swarmpool {args[0]} failed (exit {code})")


async def ready_count(http: aiohttp.ClientSession, port: int) -> int:
    """Warm echo instances as the gateway sees them (its public /status: aggregates only)."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/status") as r:
            return int((await r.json())["apps"]["echo"]["ready"]) if r.status == 200 else 0
    except (aiohttp.ClientError, KeyError, ValueError):
        return 0


async def deployed_stack(n: int, no_refill: bool, functions: int) -> Rounds:
    """`swarmpool deploy` on this machine's engine (a single-node swarm: 1 NATS server, `functions`
    function hosts, one gateway in host mode on a free port), the click rounds through its gateway,
    then `swarmpool undeploy`. Warm-up and refills are read from the gateway's public /status."""
    state = Path(tempfile.mkdtemp(prefix="bench-claim-stack-"))
    (state / "catalogue.toml").write_text(catalogue(n, refill=not no_refill))
    port = free_port()
    stack = "bench" + str(os.getpid() % 10000)
    build = await asyncio.create_subprocess_exec(str(ROOT / "apps/control/build.sh"), stdout=sys.stderr)
    if await build.wait() != 0:  # the stack runs this checkout (build.sh rebuilds only when it changed)
        raise SystemExit("apps/control/build.sh failed")
    started = time.perf_counter()
    try:
        image = os.environ.get("SWARMPOOL_CONTROL_IMAGE")  # the name build.sh gave it, when not the default
        await swarmpool_command("deploy", "--catalogue", str(state / "catalogue.toml"), "--stack", stack,
                                "--port", str(port), "--nats-replicas", "1", "--functions-replicas",
                                str(functions), "--state-dir", str(state), "--timeout", "300",
                                *(("--image", image) if image else ()), timeout=420)
        async with aiohttp.ClientSession() as http:
            async def full_again(since: float) -> float:
                """Seconds from `since` until /status shows the pool full again, once it was seen short
                (the gateway's copy of the records may lag the last 303 by a moment)."""
                short, patience = False, time.perf_counter() + 2.0
                while True:
                    ready = await ready_count(http, port)
                    if ready < n:
                        short = True
                    elif short or time.perf_counter() > patience:
                        return time.perf_counter() - since
                    await asyncio.sleep(0.1)

            async with asyncio.timeout(900):
                while await ready_count(http, port) < n:
                    await asyncio.sleep(0.2)
            print(f"deployed stack: warm pool of {n} ready in {time.perf_counter() - started:.1f} s "
                  "(deploy included)", file=sys.stderr)
            return await rounds(port, n, no_refill, full_again)
    finally:
        await swarmpool_command("undeploy", "--stack", stack, "--timeout", "300", timeout=420)
        shutil.rmtree(state, ignore_errors=True)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="pool size and clicks per round")
    parser.add_argument("--no-refill", action="store_true",
                        help="pool max = n: measure the click path alone, without refills competing for CPU")
    parser.add_argument("--stack", action="store_true",
                        help="then the same rounds against `swarmpool deploy` on this machine's single-node swarm")
    parser.add_argument("--functions-replicas", type=int, default=2, help="function hosts of the stack (default: 2)")
    parser.add_argument("--smoke", action="store_true", help="a pool of 3, 20 floor round trips: does it still run (CI)")
    args = parser.parse_args()
    n = min(args.n, 3) if args.smoke else args.n
    floor, single = await single_process(n, args.no_refill, floor_rounds=20 if args.smoke else 200)
    stack = await deployed_stack(n, args.no_refill, args.functions_replicas) if args.stack else None
    table(f"click -> 303 against a warm pool of {n} echo instances, `swarmpool up` (one process; "
          "ms; ratio = p50 / NATS floor p50)", floor, single)
    if stack is not None:
        # deploy publishes the stack's NATS port only with TLS, so its own floor is not measured here
        table(f"click -> 303 against a warm pool of {n} echo instances, `swarmpool deploy` on this node "
              f"(1 NATS server, {args.functions_replicas} function hosts, 1 gateway; ms; ratio = p50 / the "
              "single process's NATS floor)", floor, stack, floor_note="NATS floor (single process's)")


if __name__ == "__main__":
    asyncio.run(main())
