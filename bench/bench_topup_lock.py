"""What one top-up pays for counting the pool consistently across hosts (functions/keeper.counting):
take the cluster-wide mutex in the leases bucket, catch the mirror up with the instance bucket, let
go; beside the baseline of the host-local lock alone, measured in the same run on a local
nats-server. With --contenders K, K hosts (own connection and mirror each) top up at once.

    python -m bench.bench_topup_lock [-n 300] [--records 100] [--contenders 2] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path

import nats

from bench.support import print_rows
from swarmpool.bus.messages import Instance
from swarmpool.bus.client import Bus
from swarmpool.bus.runtime import Context
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.functions.keeper import KeeperState, counting
from swarmpool.natsd import EmbeddedNats


async def timed(n: int, enter: object) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        async with enter():  # type: ignore[operator]
            pass
        out.append((time.perf_counter() - t) * 1000)
    return out


async def main(n: int, records: int, contenders: int) -> None:
    subjects = Subjects("bench")
    with tempfile.TemporaryDirectory() as tmp:
        async with EmbeddedNats(Path(tmp), auth=False) as server, AsyncExitStack() as stack:
            hosts = []
            for i in range(max(contenders, 1)):
                nc = await nats.connect(server.url)
                stack.push_async_callback(nc.drain)
                store = await stack.enter_async_context(await InstanceStore.open(nc, subjects, time.time))
                config = await ConfigStore.open(nc, subjects)
                stack.push_async_callback(config.close)
                hosts.append(Context(bus=Bus(nc), subjects=subjects, store=store, config=config, catalogue=Catalogue(),
                                     swarm=None, namespace="bench", host=f"h{i}"))  # type: ignore[arg-type]
            for k in range(records):  # a pool's worth of records in the bucket
                await hosts[0].store.create(Instance(app="echo", id=f"{k:026d}", state="ready", created_at=time.time()))
            local = hosts[0].state(KeeperState).lock
            rows = [("host-local lock only (baseline)", await timed(n, lambda: local))]
            rows.append(("counting: mutex + catch-up, 1 host", await timed(n, lambda: counting(hosts[0]))))
            if contenders > 1:
                per_host = await asyncio.gather(*(timed(n, lambda c=c: counting(c)) for c in hosts))
                rows.append((f"counting, {contenders} hosts at once", [v for h in per_host for v in h]))
            print_rows(rows, decimals=0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--contenders", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="tiny counts: does the bench still run (CI)")
    args = parser.parse_args()
    if args.smoke:
        args.n, args.records = min(args.n, 10), min(args.records, 5)
    asyncio.run(main(args.n, args.records, args.contenders))
