"""A redeploy with a changed catalogue replaces the one stored on the bus (real nats-server): function
hosts started with `--catalogue-deployed-at` store their file over an older stored one, while a host
restarted from an older deploy, or one started before a later `admin reload`, keeps the stored one."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import nats

from swarmpool.host import catalogue_file, catalogue_version, functions_host
from swarmpool.catalogue import parse
from swarmpool.swarm.adapter import Swarm
from tests.stack import echo_catalogue, wait_for


async def test_a_newer_deploy_replaces_the_stored_catalogue_a_reload_stays(nats_server, namespace) -> None:  # type: ignore[no-untyped-def]
    v1 = echo_catalogue(size=0, max_=1)
    v2 = echo_catalogue(size=0, max_=2)
    v3 = echo_catalogue(size=0, max_=3)
    async with AsyncExitStack() as stack:
        swarm = Swarm(namespace)
        stack.push_async_callback(swarm.close)

        names = iter(f"host{i}" for i in range(10))

        async def host(text: str, deployed_at: float | None):  # type: ignore[no-untyped-def]
            nc = await nats.connect(nats_server.url)  # each host its own connection, like separate processes
            stack.push_async_callback(nc.drain)
            return await stack.enter_async_context(functions_host(
                nc, parse(text, "cat.toml"), swarm, namespace, host=next(names),
                catalogue_text=text, catalogue_source="cat.toml", catalogue_deployed_at=deployed_at))

        first_deploy = time.time()
        a = await host(v1, first_deploy)
        assert a.catalogues.current().version == catalogue_version(v1)  # none stored: stored

        second_deploy = time.time()  # a redeploy with a changed file: its hosts replace it, everyone follows
        b = await host(v2, second_deploy)
        assert b.catalogues.current().version == catalogue_version(v2)
        await wait_for(lambda: a.catalogue_version == catalogue_version(v2), timeout=10, what="host a to follow")
        assert a.catalogue.apps["echo"].pool.max == 2

        c = await host(v1, first_deploy)  # a host of the older deploy restarting keeps the newer file
        assert c.catalogues.current().version == catalogue_version(v2) == c.catalogue_version
        d = await host(v1, None)  # `swarmpool functions` without a deploy time: only when none is stored
        assert d.catalogues.current().version == catalogue_version(v2)

        # `admin reload` after the deploy: a host of that deploy restarting keeps the reloaded file
        await a.catalogues.publish(catalogue_file(v3, "reloaded.toml", time.time()))
        await wait_for(lambda: b.catalogue_version == catalogue_version(v3), timeout=10, what="host b to follow")
        e = await host(v2, second_deploy)
        assert e.catalogues.current().version == catalogue_version(v3) == e.catalogue_version
