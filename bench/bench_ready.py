"""What saying "ready" costs a host once it has subscribed (bus.wire.subscribed): one request
through the client's buffer behind its SUBs, answered by the server; beside the baseline of
nats-py's flush() (a PING that may overtake the SUBs, so no guarantee), measured in the same run on
a local nats-server. Each round first makes --subs fresh subscriptions, as a starting host does.

    python -m bench.bench_ready [-n 300] [--subs 10] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from bench.support import print_rows
from swarmpool.bus.wire import subscribed
from swarmpool.natsd import EmbeddedNats


async def timed(nc: NATS, name: str, n: int, subs: int, ready: Callable[[], Awaitable[None]]) -> list[float]:
    out = []
    for i in range(n):
        for k in range(subs):
            await nc.subscribe(f"bench.{name}.{i}.{k}", queue="bench")
        t = time.perf_counter()
        await ready()
        out.append((time.perf_counter() - t) * 1000)
    return out


async def main(n: int, subs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats(Path(tmp), auth=False) as server:
            nc = await nats.connect(server.url)
            try:
                rows = [("flush (baseline, no guarantee)", await timed(nc, "flush", n, subs, nc.flush)),
                        ("subscribed ($JS.API.INFO)", await timed(nc, "subscribed", n, subs,
                                                                  lambda: subscribed(nc)))]
            finally:
                await nc.close()
    print_rows(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--subs", type=int, default=10)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: does the bench still run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.subs = min(args.n, 10), min(args.subs, 2)
    asyncio.run(main(args.n, args.subs))
