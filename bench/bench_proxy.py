"""Benchmark: one real echo instance reached directly, through the gateway, nginx + gateway, and CHP.

    python -m bench.bench_proxy [--requests 2000] [--concurrency 32] [--seconds 5] [--profile] [--smoke]

Starts an embedded nats-server, `swarmpool functions` and `swarmpool gateway` as separate
processes (so the load generator never shares the gateway's event loop), waits for one warm echo
instance on the real swarm, claims it with /launch/echo, then measures on 127.0.0.1 only:

- HTTP: the same small GET `/i/<id>/hello` with wrk (Debian package): req/s at `--concurrency`
  connections, latency p50/p99 at one connection (sequential round trips);
- WebSocket `/i/<id>/ws`: `--requests` sequential echo round trips on one socket (p50/p99), and
  msgs/s with `--concurrency` sockets in lock-step (client in this process, not the gateway's).

Paths: direct (the instance's published port), gateway, nginx -> gateway, configurable-http-proxy
(installed from npm into bench/.node on first use, route added through its REST API).
`--profile` samples the gateway with py-spy during its wrk run and prints where the time goes.
Everything it starts is stopped, and the instance is removed from the swarm, at the end.
The bus is set up as `swarmpool up` sets it (a user per role, no anonymous access), and the catalogue
allows `--concurrency` WebSockets per instance (`ws_per_instance`). `--smoke`: tiny counts and no CHP
unless it is installed already (CI runs it so the bench cannot rot).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import re
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nats.errors
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from swarmpool.bus.messages import Instance, RetireRequest
from swarmpool.bus.wire import connect, encode
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.swarm.adapter import Swarm
from swarmpool.ids import instance_prefix, short_id
from swarmpool.natsd import EmbeddedNats, free_port

from bench.support import echo_catalogue, instance_id_of, nginx_front, stop_process

REPO = Path(__file__).resolve().parent.parent
NODE_DIR = REPO / "bench" / ".node"
CHP = NODE_DIR / "node_modules" / ".bin" / "configurable-http-proxy"
ARTIFACTS = REPO / "artifacts" / "bench"


# ---- processes ----


@contextmanager
def process(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process with its output in `log`; stopped with SIGTERM (then SIGKILL) on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        try:
            yield proc
        finally:
            stop_process(proc, signal.SIGTERM, timeout=15)


async def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 60,
                    log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"{what} exited with {proc.returncode}" + (f":\n{said}" if said else ""))
            try:
                async with http.get(url) as r:
                    if r.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(f"{what} did not answer {url} within {timeout:.0f} s")


def ensure_chp() -> Path:
    """configurable-http-proxy from npm, cached in bench/.node (git-ignored by its own .gitignore)."""
    if not CHP.exists():
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        print("installing configurable-http-proxy into bench/.node (first run only) ...", flush=True)
        subprocess.run(["npm", "install", "--silent", "--prefix", str(NODE_DIR), "configurable-http-proxy"],
                       check=True)
    (NODE_DIR / ".gitignore").write_text("*\n")
    return CHP


@asynccontextmanager
async def chp_front(instance_id: str, endpoint: str, logs: Path) -> AsyncIterator[str]:
    """CHP on loopback with one route /i/<id> -> the instance, added like JupyterHub does (REST API)."""
    port, api_port, token = free_port(), free_port(), "bench-" + "".join(random.choices(string.ascii_lowercase, k=16))
    cmd = [str(ensure_chp()), "--ip", "127.0.0.1", "--port", str(port), "--api-ip", "127.0.0.1",
           "--api-port", str(api_port), "--log-level", "warn"]
    with process(cmd, logs / "chp.log", env={"CONFIGPROXY_AUTH_TOKEN": token}) as proc:
        api = f"http://127.0.0.1:{api_port}/api/routes"
        headers = {"Authorization": f"token {token}"}
        await wait_http(f"{api}", proc, "configurable-http-proxy")
        async with aiohttp.ClientSession(headers=headers) as http:
            async with http.post(api + instance_prefix(instance_id).rstrip("/"), json={"target": f"http://{endpoint}"}) as r:
                assert r.status == 201, await r.text()
        yield f"http://127.0.0.1:{port}"


@dataclass
class SeparateStack:
    """nats-server, `swarmpool functions` and `swarmpool gateway` as separate processes."""

    namespace: str
    nc: NATS  # as the operator role: reads the records, asks the admin service
    claims: NATS  # as the gateway role: the only one that may ask for a claim
    store: InstanceStore  # this process's mirror of the records
    gateway_url: str
    gateway: subprocess.Popen[bytes]
    tmp: Path

    async def wait_ready(self, app: str, n: int, timeout: float = 180) -> list[Instance]:
        """Wait until the pool of `app` holds n ready instances and none starting."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.store.all(app)
            ready = [r for r in records if r.state == "ready"]
            if len(ready) >= n and not any(r.state == "starting" for r in records):
                return sorted(ready, key=lambda r: r.ready_at or 0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app}: no {n} ready instances within {timeout:.0f} s")
            await self.store.wait_changed(1)

    async def retire(self, app: str, instance_id: str) -> None:
        """`swarmpool admin retire`, over the bus."""
        reply = await self.nc.request(Subjects(self.namespace).admin("retire"),
                                      encode(RetireRequest(app=app, id=instance_id)), timeout=30)
        assert b'"type":"ok"' in reply.data, reply.data


async def records_once_created(nc: NATS, subjects: Subjects, functions: subprocess.Popen[bytes], log: Path,
                               timeout: float = 60) -> InstanceStore:
    """The instance records, once the functions host is up: its admin service answers (it serves that only
    after creating every bucket the gateway reads)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await nc.request(f"$SRV.PING.{subjects.admin_service}", b"", timeout=1)
            return await InstanceStore.open(nc, subjects, time.time, create=False)
        except (BucketNotFoundError, nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if functions.poll() is not None:
                raise RuntimeError(f"the functions host exited with {functions.returncode}:\n"
                                   f"{log.read_text(errors='replace')[-2000:]}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no instance records within {timeout:.0f} s") from None
            await asyncio.sleep(0.1)


@asynccontextmanager
async def separate_stack(catalogue_text: str) -> AsyncIterator[SeparateStack]:
    """The whole swarmpool in separate processes on an embedded nats-server; removes its instances after."""
    namespace = "bench" + "".join(random.choices(string.ascii_lowercase, k=5))
    swarm = Swarm(namespace)
    await swarm.ping()
    try:
        with tempfile.TemporaryDirectory(prefix="sp-bench-") as tmp_dir:
            tmp = Path(tmp_dir)
            catalogue = tmp / "catalogue.toml"
            catalogue.write_text(catalogue_text)
            async with AsyncExitStack() as stack:
                natsd = await stack.enter_async_context(EmbeddedNats(tmp / "nats", namespaces=(namespace,)))
                common = ["--nats-url", natsd.url, "--namespace", namespace, "--catalogue", str(catalogue)]
                cli = [sys.executable, "-m", "swarmpool.cli"]
                functions = stack.enter_context(process([*cli, "functions", *common, "--credentials",
                                                         str(natsd.credentials("functions"))], tmp / "functions.log"))
                subjects = Subjects(namespace)
                nc, claims = [await connect(natsd.url, f"bench-{role}", access=natsd.access(role),
                                            inbox_prefix=subjects.inbox(role)) for role in ("operator", "gateway")]
                stack.push_async_callback(nc.drain)
                stack.push_async_callback(claims.drain)
                # the functions host creates the buckets the gateway only reads: it starts once they are there
                store = await stack.enter_async_context(
                    await records_once_created(nc, subjects, functions, tmp / "functions.log"))
                port = free_port()
                gateway = stack.enter_context(process(
                    [*cli, "gateway", *common, "--credentials", str(natsd.credentials("gateway")),
                     "--host", "127.0.0.1", "--port", str(port)], tmp / "gateway.log"))
                url = f"http://127.0.0.1:{port}"
                await wait_http(f"{url}/healthz", gateway, "the gateway", log=tmp / "gateway.log")
                print("waiting for the warm pool on the swarm ...", flush=True)
                yield SeparateStack(namespace=namespace, nc=nc, claims=claims, store=store, gateway_url=url,
                                    gateway=gateway, tmp=tmp)
    finally:
        await swarm.remove_all()  # the functions host is stopped by now: nothing recreates them
        await swarm.close()


# ---- measurements ----


@dataclass
class Result:
    path: str
    rps: float = 0.0
    p50: float = 0.0  # ms, HTTP at one connection
    p99: float = 0.0
    ws_rate: float = 0.0  # msgs/s with `concurrency` sockets
    ws_p50: float = 0.0  # ms, one socket, sequential
    ws_p99: float = 0.0


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _wrk_ms(text: str, label: str) -> float:
    match = re.search(rf"^\s*{re.escape(label)}\s+([\d.]+)(us|ms|s)\s*$", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no {label} in wrk output:\n{text}")
    return float(match.group(1)) * _UNITS[match.group(2)]


async def wrk(url: str, connections: int, seconds: float) -> tuple[float, float, float, str]:
    """Run wrk (one thread: two contended cores) and return req/s, p50 ms, p99 ms, raw output."""
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "10s", url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out = (await proc.communicate())[0].decode()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed:\n{out}")
    if "Non-2xx" in out or "Socket errors" in out:
        print(f"  warning: wrk saw errors for {url}:\n{out}", flush=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, _wrk_ms(out, "50%"), _wrk_ms(out, "99%"), out


async def http_sequential(url: str, n: int) -> list[float]:
    """Fallback when wrk is missing: n sequential GETs on one keep-alive connection, in seconds."""
    latencies = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as http:
        for _ in range(n):
            started = time.perf_counter()
            async with http.get(url) as r:
                await r.read()
            latencies.append(time.perf_counter() - started)
    return latencies


async def http_rate(url: str, seconds: float, concurrency: int) -> float:
    done = 0
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with http.get(url) as r:
                    await r.read()
                done += 1
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.monotonic() - started)


async def ws_sequential(url: str, n: int) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for i in range(50):  # warm up
            await ws.send_str(f"w{i}")
            await ws.receive_str(timeout=10)
        for i in range(n):
            started = time.perf_counter()
            await ws.send_str(f"m{i}")
            await ws.receive_str(timeout=10)
            latencies.append(time.perf_counter() - started)
    return latencies


async def ws_rate(url: str, sockets: int, seconds: float) -> float:
    """Echo round trips per second over `sockets` sockets, each in lock-step."""
    done = 0
    async with aiohttp.ClientSession() as http:
        conns = [await http.ws_connect(url) for _ in range(sockets)]
        deadline = time.monotonic() + seconds

        async def pump(ws: aiohttp.ClientWebSocketResponse) -> None:
            nonlocal done
            while time.monotonic() < deadline:
                await ws.send_str("x" * 32)
                await ws.receive_str(timeout=10)
                done += 1

        started = time.monotonic()
        await asyncio.gather(*(pump(ws) for ws in conns))
        elapsed = time.monotonic() - started
        for ws in conns:
            await ws.close()
    return done / elapsed


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100)[q - 1] * 1000


async def measure(name: str, base: str, prefix: str, args: argparse.Namespace,
                  profile_pid: int | None = None) -> Result:
    url = f"{base}{prefix}/hello"
    result = Result(path=name)
    profiler = None
    if shutil.which("wrk"):
        await wrk(url, args.concurrency, 1)  # warm up: connections, caches
        if profile_pid is not None:
            profiler = await start_profiler(profile_pid, args.seconds, PROFILE_HTTP)
        result.rps, _, _, _ = await wrk(url, args.concurrency, args.seconds)
        if profiler is not None:
            await profiler.wait()
        _, result.p50, result.p99, _ = await wrk(url, 1, args.seconds)
    else:
        result.rps = await http_rate(url, args.seconds, args.concurrency)
        latencies = await http_sequential(url, args.requests)
        result.p50, result.p99 = pct(latencies, 50), pct(latencies, 99)
    ws_url = f"{base}{prefix}/ws"
    latencies = await ws_sequential(ws_url, args.requests)
    result.ws_p50, result.ws_p99 = pct(latencies, 50), pct(latencies, 99)
    profiler = None
    if profile_pid is not None:
        profiler = await start_profiler(profile_pid, args.seconds, PROFILE_WS)
    result.ws_rate = await ws_rate(ws_url, args.concurrency, args.seconds)
    if profiler is not None:
        await profiler.wait()
    print(f"  measured {name}", flush=True)
    return result


# ---- profiling ----


PROFILE_HTTP = ARTIFACTS / "gateway-pyspy-http.txt"
PROFILE_WS = ARTIFACTS / "gateway-pyspy-ws.txt"


async def start_profiler(pid: int, seconds: float, output: Path) -> asyncio.subprocess.Process:
    spy = shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250", "--format", "raw",
        "--output", str(output), "--nonblocking", stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)


def summarize_profile(path: Path, what: str, top: int = 25) -> str:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [re.sub(r" \(([^)]*/)?([^/)]+)\)", r" (\2)", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    lines = [f"py-spy: {total} samples of the gateway under {what} (raw stacks in {path})",
             "  self%  incl%  function"]
    for frame, n in own.most_common(top):
        lines.append(f"  {100 * n / total:5.1f}  {100 * inclusive[frame] / total:5.1f}  {frame}")
    interesting = ("proxy.py", "web_protocol", "client_reqrep", "connector", "streams", "http_parser",
                   "web_response", "activity.py", "metrics", "prometheus", "multidict", "yarl", "helpers")
    lines.append("  inclusive share of selected areas:")
    for key in interesting:
        n = max((c for f, c in inclusive.items() if key in f), default=0)
        if n:
            lines.append(f"    {key:<16} {100 * n / total:5.1f}% (largest frame)")
    return "\n".join(lines)


# ---- main ----


def table(results: list[Result], concurrency: int, requests: int) -> str:
    direct = results[0]
    head = (f"{'path':<18} {'req/s':>8} {'x direct':>8} {'p50 ms':>7} {'p99 ms':>7} {'+p50 ms':>8} "
            f"{'WS msg/s':>9} {'x direct':>8} {'WS p50':>7} {'WS p99':>7} {'+WS p50':>8}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(
            f"{r.path:<18} {r.rps:>8.0f} {r.rps / direct.rps:>8.2f} {r.p50:>7.3f} {r.p99:>7.3f} "
            f"{r.p50 - direct.p50:>+8.3f} {r.ws_rate:>9.0f} {r.ws_rate / direct.ws_rate:>8.2f} "
            f"{r.ws_p50:>7.3f} {r.ws_p99:>7.3f} {r.ws_p50 - direct.ws_p50:>+8.3f}")
    tool = "wrk -t1" if shutil.which("wrk") else "aiohttp client"
    rows.append(f"req/s: {tool}, {concurrency} connections; p50/p99: one connection, sequential. "
                f"WS: {requests} sequential echo round trips (p50/p99), msg/s with {concurrency} sockets "
                f"in lock-step (aiohttp client in the bench process). All on 127.0.0.1.")
    return "\n".join(rows)


def proxy_catalogue(sockets: int) -> str:
    """One echo instance whose gateway admits `sockets` WebSockets to it (and one more for the sequential run)."""
    text = echo_catalogue(size=1, max_=2)
    return text.replace("[settings]\n", f"[settings]\nws_per_instance = {max(16, sockets + 1)}\n", 1)


async def main(args: argparse.Namespace) -> int:
    if args.smoke:
        args.requests, args.concurrency, args.seconds = min(args.requests, 50), min(args.concurrency, 4), 0.5
    with_chp = not args.smoke or CHP.exists()
    async with separate_stack(proxy_catalogue(args.concurrency)) as pool, AsyncExitStack() as stack:
        await pool.wait_ready("echo", 1)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{pool.gateway_url}/launch/echo", allow_redirects=False) as r:
                assert r.status == 303, f"launch answered {r.status}"
                location = r.headers["Location"]
        instance_id = instance_id_of(location)
        record = pool.store.get("echo", instance_id)
        assert record is not None
        endpoint = record.instance.endpoint
        prefix = instance_prefix(instance_id).rstrip("/")  # measure() appends "/hello", "/ws"
        gw_url, tmp, gateway = pool.gateway_url, pool.tmp, pool.gateway
        nginx_url = stack.enter_context(nginx_front(tmp / "nginx", gw_url.removeprefix("http://"),
                                                    "--access-log", "off"))
        chp_url = await stack.enter_async_context(chp_front(instance_id, endpoint, tmp)) if with_chp else ""
        print(f"instance {short_id('echo', instance_id)}… on {endpoint}; measuring "
              f"({args.seconds:g} s per run, {args.concurrency} connections) ...", flush=True)
        results = [
            await measure("direct", f"http://{endpoint}", prefix, args),
            await measure("gateway", gw_url, prefix, args,
                          profile_pid=gateway.pid if args.profile else None),
            await measure("nginx -> gateway", nginx_url, prefix, args),
        ]
        if with_chp:
            results.append(await measure("chp", chp_url, prefix, args))
        print()
        print(table(results, args.concurrency, args.requests))
        by = {r.path: r for r in results}
        gw, direct = by["gateway"], by["direct"]
        print(f"\ngateway adds {gw.p50 - direct.p50:+.3f} ms at p50 (HTTP), "
              f"{gw.ws_p50 - direct.ws_p50:+.3f} ms (WS); goal < 1 ms: "
              f"{'met' if gw.p50 - direct.p50 < 1 else 'NOT met'}")
        if "chp" in by:
            chp = by["chp"]
            print(f"gateway vs configurable-http-proxy: HTTP {gw.rps / chp.rps:.2f}x, "
                  f"WS {gw.ws_rate / chp.ws_rate:.2f}x throughput")
        else:
            print("configurable-http-proxy: not measured (--smoke, and it is not installed in bench/.node)")
        if args.profile:
            for path, what in ((PROFILE_HTTP, "HTTP load (wrk)"), (PROFILE_WS, "WebSocket load")):
                if path.exists():
                    print()
                    print(summarize_profile(path, what))
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="sequential WS round trips (and HTTP GETs without wrk)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections/sockets for throughput")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each throughput run")
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway during its throughput run")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, no CHP install: does the bench still run")
    sys.exit(asyncio.run(main(parser.parse_args())))
