"""Assembling a functions host: stores, context and the runtime, as one async context manager."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from nats.aio.client import Client as NATS

from swarmpool.bus.messages import CatalogueFile, Requester
from swarmpool.bus.client import Bus
from swarmpool.bus.runtime import Context, Runtime
from swarmpool.bus.service import Endpoint, serve
from swarmpool.bus.spec import Catalogue
from swarmpool.bus.state import CatalogueStore, ConfigStore, InstanceStore, catalogue_file, catalogue_version
from swarmpool.bus.subjects import QUEUE_FUNCTIONS, Subjects
from swarmpool.bus.verbs import VERBS, Verb
from swarmpool.catalogue import CatalogueError, parse
from swarmpool.functions import admin, all_handlers
from swarmpool.functions.admin import announce_trust
from swarmpool.functions.policy import target
from swarmpool.swarm.port import SwarmPort

log = logging.getLogger(__name__)


def parse_file(file: CatalogueFile) -> Catalogue | None:
    """The catalogue of a stored file, parsed by the loader every host starts with (None: refused)."""
    try:
        return parse(file.text, file.source or "<catalogue>", calendars=file.calendars)
    except CatalogueError as err:  # never stored by swarmpool (validated before), but the bucket is shared
        log.error("ignoring the stored catalogue %s: %s", file.version, err)
        return None


def should_store(stored: CatalogueFile | None, version: str, replace: bool, deployed_at: float | None) -> bool:
    """Whether a starting host stores its own catalogue file over the one on the bus: `up` always does
    (`replace`), any host when none is stored, and a deployed host when its file differs from the stored one
    and was deployed after that one was stored (a redeploy of a changed file; a later `admin reload`, or a
    host restarted with an older deploy, keeps the stored one)."""
    if replace or stored is None:
        return True
    return deployed_at is not None and stored.version != version and stored.at < deployed_at


@asynccontextmanager
async def functions_host(nc: NATS, catalogue: Catalogue, swarm: SwarmPort, namespace: str = "sp",
                         host: str | None = None, catalogue_text: str | None = None,
                         catalogue_source: str = "", replace_catalogue: bool = False,
                         catalogue_deployed_at: float | None = None) -> AsyncIterator[Context]:
    """Run every function (keeper, prober, claimer, ...) on `nc` until the block exits.

    The catalogue every host follows lives on the bus. `catalogue_text` is the file `catalogue`
    was parsed from: `up` stores it (`replace_catalogue`), other hosts when none is stored or when
    it was deployed (`catalogue_deployed_at`) after the stored one (`should_store`); then every host
    follows the stored one (`admin reload` stores a new one)."""
    subjects = Subjects(namespace)
    store = await InstanceStore.open(nc, subjects, time.time)
    config = await ConfigStore.open(nc, subjects)
    catalogues = await CatalogueStore.open(nc, subjects)
    ctx = Context(bus=Bus(nc), subjects=subjects, store=store, config=config, catalogue=catalogue,
                  swarm=swarm, namespace=namespace, host=host or f"{socket.gethostname()}-{id(store):x}",
                  catalogues=catalogues)
    if catalogue_text is not None:
        ctx.catalogue_version = catalogue_version(catalogue_text, catalogue.calendars)
        stored = catalogues.current()
        if should_store(stored, ctx.catalogue_version, replace_catalogue, catalogue_deployed_at):
            if await catalogues.publish(catalogue_file(catalogue_text, catalogue_source, time.time(),
                                                       calendars=catalogue.calendars),
                                        only_if_absent=stored is None and not replace_catalogue):
                await announce_trust(ctx, catalogue, catalogue_source, Requester(host=socket.gethostname()))
        elif stored is not None and stored.version != ctx.catalogue_version:
            log.info("following the stored catalogue %s (stored %s), not this host's %s", stored.version,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(stored.at)), ctx.catalogue_version)
    catalogues.on_change(lambda file: adopt(ctx, file))
    stored = catalogues.current()
    if stored is not None:
        adopt(ctx, stored)
    unfollow = ctx.metrics.follow(store, lambda: {a: status_target(ctx, a) for a in ctx.catalogue.apps})
    try:
        async with Runtime(ctx, all_handlers()), admin_service(ctx):
            yield ctx
    finally:
        unfollow()
        await catalogues.close()
        await config.close()
        await store.close()


def adopt(ctx: Context, file: CatalogueFile) -> None:
    """Swap in a newer stored catalogue: new apps warm up at the next top-up, removed ones drain
    (the reaper), changed ones are recycled by the keeper."""
    if file.version == ctx.catalogue_version:
        return
    catalogue = parse_file(file)
    if catalogue is None:
        return
    before = set(ctx.catalogue.apps)
    ctx.catalogue, ctx.catalogue_version = catalogue, file.version
    added, removed = sorted(set(catalogue.apps) - before), sorted(before - set(catalogue.apps))
    log.info("catalogue %s from %s: %d apps%s%s", file.version, file.source or "?", len(catalogue.apps),
             f", added {', '.join(added)}" if added else "", f", removed {', '.join(removed)}" if removed else "")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("swarmpool")
    except PackageNotFoundError:
        return "0.0.0"


def status_target(ctx: Context, app: str) -> int:
    return target(ctx.app(app), ctx.config.cached(app), ctx.clock(), ctx.settings.timezone).size


def admin_service(ctx: Context) -> AbstractAsyncContextManager[object]:
    """The admin verbs as a nats.micro service (discoverable as ``$SRV.INFO.<ctx.subjects.admin_service>``)."""
    def endpoint(verb: Verb) -> Endpoint:
        async def handle(request: object) -> object:
            return await admin.run(ctx, verb, request)  # type: ignore[arg-type]
        return Endpoint(name=verb.name, subject=ctx.subjects.admin(verb.name), request=verb.request,
                        handle=handle, description=verb.help)

    return serve(ctx.bus.client, name=ctx.subjects.admin_service, version=_version(),
                 description="swarmpool operators' verbs (swarmpool admin --help)",
                 endpoints=[endpoint(v) for v in VERBS.values()], metrics=ctx.metrics,
                 queue=f"{QUEUE_FUNCTIONS}.{ctx.namespace}", metadata={"namespace": ctx.namespace})
