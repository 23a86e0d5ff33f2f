"""Click -> 303 latency against a warm pool, beside a bare NATS request/reply as the floor.

Runs `swarmpool up` (embedded nats-server, real swarm, echo app) as a separate process, waits
for a warm pool of N, then fires N clicks at once (burst) and, after refill, N clicks one after
another (sequential); prints p50/p99/max, the time until the pool is full again, and the NATS
round trip measured in the same run.

    python -m bench.bench_claim [-n 100]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import nats

from swarmpool.natsd import free_port

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


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


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


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=100, help="pool size and clicks per round")
    parser.add_argument("--no-refill", action="store_true",
                        help="pool max = n: measure the click path alone, without refills competing for CPU")
    args = parser.parse_args()
    n = args.n
    state = Path(tempfile.mkdtemp(prefix="bench-claim-"))
    (state / "catalogue.toml").write_text(catalogue(n, refill=not args.no_refill))
    port = free_port()
    namespace = "bench" + str(os.getpid() % 10000)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(state / "catalogue.toml"),
        "--port", str(port), "--state-dir", str(state), "--namespace", namespace,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    nats_url = ""
    ready = re.compile(rf"echo (\d+)/{n} ready")
    full_at: list[float] = []

    async def follow() -> None:
        nonlocal nats_url
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = raw.decode()
            if m := re.search(r"embedded nats-server on (\S+)", line):
                nats_url = m.group(1)
            if (m := ready.search(line)) and int(m.group(1)) >= n:
                full_at.append(time.perf_counter())

    reader = asyncio.create_task(follow())
    base = f"http://127.0.0.1:{port}/launch/echo"
    try:
        started = time.perf_counter()
        while not full_at:
            if proc.returncode is not None:
                raise SystemExit("swarmpool up exited early")
            await asyncio.sleep(0.2)
        print(f"warm pool of {n} ready in {full_at[-1] - started:.1f} s", file=sys.stderr)
        floor = await nats_floor(nats_url, 200)
        connector = aiohttp.TCPConnector(limit=0)

        async def refill_time(since: float) -> float | None:
            """Seconds from `since` until the progress line shows the pool full again (None: no refill)."""
            if args.no_refill:
                return None
            while not full_at:
                await asyncio.sleep(0.05)
            full = full_at[-1]
            full_at.clear()
            return full - since

        async with aiohttp.ClientSession(connector=connector) as http:
            await click(http, f"http://127.0.0.1:{port}/healthz")
            # sequential first (latency of one click), then a burst (many students at once)
            seq_n = n // 2 if args.no_refill else n
            burst_n = n - seq_n if args.no_refill else n
            full_at.clear()
            sequential = []
            for _ in range(seq_n):
                sequential.append(await click(http, base))
            refill_seq = await refill_time(time.perf_counter())
            t0 = time.perf_counter()
            burst = await asyncio.gather(*(click(http, base) for _ in range(burst_n)))
            burst_done = time.perf_counter()
            refill_burst = await refill_time(burst_done)
        for name, results in (("burst", burst), ("sequential", sequential)):
            ids = [loc.split("/")[2] for _, status, loc in results if status == 303]
            assert len(ids) == len(results) == len(set(ids)), f"{name}: {len(ids)} claims, {len(set(ids))} distinct"
        f50 = statistics.median(floor)
        print()
        print(f"click -> 303 against a warm pool of {n} echo instances (ms; ratio = p50 / NATS floor p50)")
        print("| measurement                        | count |      p50 |      p99 |      max |   ratio |")
        print("|------------------------------------|-------|----------|----------|----------|---------|")
        print(row("NATS request/reply (floor)", floor, f50))
        print(row(f"click, sequential", [ms for ms, _, _ in sequential], f50))
        print(row(f"click, {burst_n} at once", [ms for ms, _, _ in burst], f50))
        print(f"| {'whole burst of ' + str(burst_n):<34} |     1 | {(burst_done - t0) * 1000:>8.1f} |          |"
              f"          |         |")
        print()
        if refill_seq is not None and refill_burst is not None:
            print(f"pool full again: {refill_seq:.1f} s after the sequential run, {refill_burst:.1f} s after the burst")
        else:
            print("no refill (--no-refill: pool max = n), so no container starts compete with the clicks")
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            async with asyncio.timeout(120):
                await proc.wait()
        except TimeoutError:
            proc.kill()
        reader.cancel()


if __name__ == "__main__":
    asyncio.run(main())
