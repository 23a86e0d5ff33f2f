"""Assembling a functions host: stores, context and the runtime, as one async context manager."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from nats.aio.client import Client as NATS

from swarmpool.bus.runtime import Context, Runtime
from swarmpool.bus.service import Endpoint, serve
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import ConfigStore, InstanceStore
from swarmpool.bus.subjects import QUEUE_FUNCTIONS, Subjects
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
    unfollow = ctx.metrics.follow(store, lambda: {a: status_target(ctx, a) for a in catalogue.apps})
    try:
        async with Runtime(ctx, all_handlers()), admin_service(ctx):
            yield ctx
    finally:
        unfollow()
        await config.close()
        await store.close()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarmpool")
    except PackageNotFoundError:
        return "0.0.0"


def status_target(ctx: Context, app: str) -> int:
    from swarmpool.functions.policy import target

    return target(ctx.app(app), ctx.config.cached(app), ctx.clock(), ctx.settings.timezone).size


def admin_service(ctx: Context) -> AbstractAsyncContextManager[object]:
    """The admin verbs as a nats.micro service (discoverable as ``$SRV.INFO.<ctx.subjects.admin_service>``)."""
    from swarmpool.functions import admin

    def endpoint(verb: admin.Verb) -> Endpoint:
        async def handle(request: object) -> object:
            return await admin.run(ctx, verb, request)  # type: ignore[arg-type]
        return Endpoint(name=verb.name, subject=ctx.subjects.admin(verb.name), request=verb.request,
                        handle=handle, description=verb.help)

    return serve(ctx.nc, name=ctx.subjects.admin_service, version=_version(),
                 description="swarmpool operators' verbs (swarmpool admin --help)",
                 endpoints=[endpoint(v) for v in admin.VERBS.values()], metrics=ctx.metrics,
                 queue=f"{QUEUE_FUNCTIONS}.{ctx.namespace}", metadata={"namespace": ctx.namespace})
