"""Benchmark: what the gateway's proxy hop costs, HTTP and WebSocket, against a direct connection.

Runs a real nats-server, a real KV record, an in-process upstream and the gateway, all on
127.0.0.1, then prints a table. Usage: python -m bench.bench_proxy_gateway [--seconds 3] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp
import msgspec
import nats
from aiohttp import WSMsgType, web

from bus.messages import Instance
from bus.spec import AppSpec, Catalogue
from bus.state import InstanceStore, new_instance_id
from bus.subjects import Subjects
from gateway import make_app
from swarmpool.natsd import EmbeddedNats


async def _upstream(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await ws.send_str(msg.data)
        return ws
    if request.path.endswith("/big"):
        return web.Response(body=b"x" * (8 * 1024 * 1024))
    return web.Response(text="ok")


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, runner.addresses[0][1]


async def _http_rate(url: str, seconds: float, concurrency: int) -> tuple[float, list[float]]:
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        async def worker() -> None:
            while time.monotonic() < deadline:
                started = time.perf_counter()
                async with http.get(url) as r:
                    await r.read()
                latencies.append(time.perf_counter() - started)
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return len(latencies) / (time.monotonic() - started), latencies


async def _throughput(url: str, rounds: int = 5) -> float:
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        total = 0
        for _ in range(rounds):
            async with http.get(url) as r:
                total += len(await r.read())
        return total / (time.perf_counter() - started) / 1e6


async def _ws_roundtrip(url: str, messages: int = 2000) -> list[float]:
    latencies: list[float] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for i in range(messages):
            started = time.perf_counter()
            await ws.send_str(f"m{i}")
            await ws.receive()
            latencies.append(time.perf_counter() - started)
    return latencies


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    return f"{statistics.quantiles(values, n=100)[int(q) - 1] * 1000:.2f}"


async def main(seconds: float, concurrency: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats(Path(tmp)) as server:
            nc = await nats.connect(server.url)
            subjects = Subjects("bench")
            store = await InstanceStore.open(nc, subjects, time.time)
            upstream_app = web.Application()
            upstream_app.router.add_route("*", "/{tail:.*}", _upstream)
            up_runner, up_port = await _serve(upstream_app)
            now = time.time()
            ready = await store.create(Instance(id=new_instance_id(), app="bench", state="ready",
                                                endpoint=f"127.0.0.1:{up_port}", created_at=now, ready_at=now))
            claimed = await store.cas(ready, msgspec.structs.replace(ready.instance, state="claimed",
                                                                     claimed_at=now))
            catalogue = Catalogue(apps={"bench": AppSpec(name="bench", image="x", port=1)})
            gw_runner, gw_port = await _serve(make_app(nc=nc, subjects=subjects, store=store,
                                                       catalogue=catalogue))
            prefix = f"/i/{claimed.instance.id}"
            targets = {"direct": f"127.0.0.1:{up_port}", "gateway": f"127.0.0.1:{gw_port}"}
            print(f"{'path':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'MB/s (8 MB)':>12} "
                  f"{'ws p50 ms':>10} {'ws p99 ms':>10}")
            for name, host in targets.items():
                rate, lat = await _http_rate(f"http://{host}{prefix}/x", seconds, concurrency)
                mbs = await _throughput(f"http://{host}{prefix}/big")
                ws = await _ws_roundtrip(f"http://{host}{prefix}/ws")
                print(f"{name:<8} {rate:>9.0f} {_ms(lat, 50):>8} {_ms(lat, 99):>8} {mbs:>12.0f} "
                      f"{_ms(ws, 50):>10} {_ms(ws, 99):>10}")
            await gw_runner.cleanup()
            await up_runner.cleanup()
            await store.close()
            await nc.drain()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    asyncio.run(main(args.seconds, args.concurrency))
