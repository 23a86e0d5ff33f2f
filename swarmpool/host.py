"""Assembling a functions host: stores, context and the runtime, as one async context manager."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from nats.aio.client import Client as NATS

from swarmpool.bus.runtime import Context, Runtime
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.functions import all_handlers
from swarmpool.swarm import SwarmPort


@asynccontextmanager
async def functions_host(nc: NATS, catalogue: Catalogue, swarm: SwarmPort, namespace: str = "sp",
                         host: str | None = None) -> AsyncIterator[Context]:
    """Run every function (keeper, prober, claimer, ...) on `nc` until the block exits."""
    subjects = Subjects(namespace)
    store = await InstanceStore.open(nc, subjects, time.time)
    config = await ConfigStore.open(nc, subjects)
    ctx = Context(nc=nc, subjects=subjects, store=store, config=config, catalogue=catalogue,
                  swarm=swarm, namespace=namespace, host=host or f"{socket.gethostname()}-{id(store):x}")
    try:
        async with Runtime(ctx, all_handlers()):
            yield ctx
    finally:
        await config.close()
        await store.close()
