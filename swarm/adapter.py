"""`Swarm`, the one facade over the Docker engine: one swarm service per app instance, found again by its labels.

It implements `swarm/port.py`'s `SwarmPort` (and what the front door needs besides) by composing the concern
modules: engine.py (client, threads), services.py and images.py (instance services), networks.py (instance
bridges), status.py (tasks, nodes, listings), lease.py (the owner lease), events.py (the event pump), probe.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import docker
import docker.errors

from swarmpool.swarm.engine import Engine
from swarmpool.swarm.events import follow
from swarmpool.swarm.images import Images
from swarmpool.swarm.lease import OwnerLease
from swarmpool.swarm.model import EngineEvent, InstanceSpec, ServiceInfo, SwarmError, TaskStatus
from swarmpool.swarm.names import NAMESPACE
from swarmpool.swarm.networks import Bridges
from swarmpool.swarm.probe import Probe
from swarmpool.swarm.services import Services, named
from swarmpool.swarm.status import NODE_CORES_TTL, Status

log = logging.getLogger(__name__)

# seconds one task listing answers `status` for every service of ours: probing many starting instances costs
# the engine one listing per probe period, not two calls per instance (which took the CPU the starts need)
SHARED_LISTING_AGE = 0.2


class Swarm:
    """Creates, watches and removes the instance services of one namespace."""

    def __init__(
        self,
        namespace: str = "sp",
        client: docker.DockerClient | None = None,
        *,
        run_by_image_id: bool = True,
        max_threads: int = 16,
    ) -> None:
        if not NAMESPACE.match(namespace):
            raise ValueError(f"namespace must match {NAMESPACE.pattern}, got {namespace!r}")
        self.namespace = namespace
        self._engine = Engine(namespace, client, max_threads=max_threads)
        self._images = Images(self._engine)
        self._bridges = Bridges(self._engine)  # one per egress class
        self._services = Services(self._engine, self._images, self._bridges, run_by_image_id=run_by_image_id)
        self._status = Status(self._engine, self._bridges)
        self._lease = OwnerLease(self._engine)
        self._probe = Probe()  # readiness probes, its client made on first use
        self._listing: tuple[float, dict[str, dict[str, Any]]] | None = None  # (when it began, newest task by service)
        self._listing_now: asyncio.Future[dict[str, dict[str, Any]]] | None = None  # the listing under way
        self._services_seen: dict[str, dict[str, Any]] = {}  # service id -> its inspection (ours never change)

    async def settle(self) -> None:
        """Wait for engine calls still running in threads (their callers may have been cancelled)."""
        await self._engine.settle()

    # -- engine ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise SwarmUnavailable with a clear message if the engine cannot be reached."""
        await self._engine.run(self._engine.ping)

    async def ensure_swarm(self) -> bool:
        """Initialise a single-node swarm (advertise 127.0.0.1) if none is active; True if it did."""
        return await self._engine.run(self._engine.ensure_swarm)

    # -- images and networks --------------------------------------------------------------------

    async def has_image(self, image: str) -> bool:
        """True when `image` is present on this node (nothing can be pulled here)."""
        return await self._engine.run(self._images.present, image)

    def image_id(self, image: str) -> str:
        """The id `image` had at the last create (instances of one id serve identical files)."""
        return self._images.ids.get(image, "")

    async def resolve_image(self, image: str) -> str:
        """The id `image` stands for now on this node ("" if absent): a tag moved means new instances."""
        return await self._engine.run(self._images.resolve, image)

    async def image_accounts(self, image: str) -> tuple[str, str, str] | None:
        """The image's own user (Config.User), /etc/passwd and /etc/group as text ("" when absent); None when
        the image is not on this node. Read from a container that is created, never started, and removed."""
        return await self._engine.run(self._images.accounts, image)

    async def network_info(self, name: str) -> dict[str, object] | None:
        """The engine's inspection of the network named exactly `name`; None if there is none."""
        return await self._engine.run(self._bridges.info, name)

    # -- services -------------------------------------------------------------------------------

    async def create(self, spec: InstanceSpec) -> str:
        """Start one instance service and return its service id."""
        spec, name = named(self.namespace, spec)
        return await self._engine.run(self._services.create, spec, name)

    async def remove(self, service_id: str) -> bool:
        """Remove a service; False if it was already gone. Never raises for NotFound."""
        self._services_seen.pop(service_id, None)  # its tasks may still be listed for a while: `status` asks it
        return await self._engine.run(self._services.remove, service_id)

    async def remove_all(self) -> int:
        """Remove every service of this namespace, then its instance bridge; returns how many services went."""
        await self.settle()  # a create finishing after the listing would leak
        ours = await self.list_ours()
        removed = sum(await asyncio.gather(*(self.remove(s.service_id) for s in ours)))
        await self._engine.run(self._bridges.remove)
        return removed

    # -- status ---------------------------------------------------------------------------------

    async def status(self, service_id: str) -> TaskStatus:
        """The state of the service's (single, newest) task; "missing" once the service is gone.

        Read from one task listing of the namespace shared by every caller (begun at most SHARED_LISTING_AGE s
        ago); a service not in it (created since, or gone) or not inspected here yet is asked on its own."""
        tasks = await self._shared_listing()
        task, service = tasks.get(service_id), self._services_seen.get(service_id)
        if task is not None and service is not None:
            return self._status.task_status(service, task)
        status, service = await self._engine.run(self._status.status_and_service, service_id)
        if service is not None:
            self._services_seen[service_id] = service
        return status

    async def _shared_listing(self) -> dict[str, dict[str, Any]]:
        """The newest task of every service of ours: the last listing if it began SHARED_LISTING_AGE s ago at most,
        else the one under way, else a new one."""
        if self._listing is not None and time.monotonic() - self._listing[0] <= SHARED_LISTING_AGE:
            return self._listing[1]
        if self._listing_now is None:
            self._listing_now = asyncio.ensure_future(self._list_tasks())
        return await asyncio.shield(self._listing_now)

    async def _list_tasks(self) -> dict[str, dict[str, Any]]:
        """One task listing for `status`; services no longer listed are forgotten (asked on their own again)."""
        began = time.monotonic()
        try:
            tasks = await self._engine.run(self._status.newest_tasks)
        finally:
            self._listing_now = None
        self._listing = (began, tasks)
        self._services_seen = {k: v for k, v in self._services_seen.items() if k in tasks}
        return tasks

    async def task_states(self) -> dict[str, TaskStatus]:
        """The newest task of every service of ours, by service id, in one listing (status.Status.task_states)."""
        return await self._engine.run(self._status.task_states)

    async def nodes(self) -> dict[str, str]:
        """Node id -> state (ready, down, unknown, disconnected) of every node of the swarm, in one
        listing; the node of this engine is ready (we are talking to it). A task on a Down node keeps
        reporting `running`: only the node's state tells that it is lost."""
        return await self._engine.run(self._status.nodes)

    async def node_cores(self) -> dict[str, int]:
        """Node id -> its cores (the engine's NanoCPUs), from a nodes listing at most NODE_CORES_TTL s old; never
        raises: an engine out of sight keeps what was known (tried again after the TTL, so a top-up never waits on
        it twice a minute)."""
        known = self._status.cores
        if known is None or time.monotonic() - known[1] > NODE_CORES_TTL:
            try:
                await self.nodes()
            except (SwarmError, docker.errors.DockerException, OSError) as err:
                log.debug("nodes' cores not listed: %s", err)
                self._status.cores = (known[0] if known else {}, time.monotonic())
        return dict(self._status.cores[0]) if self._status.cores else {}

    async def list_ours(self, app: str | None = None) -> list[ServiceInfo]:
        """Our services (label owner == namespace), optionally of one app, oldest first."""
        return await self._engine.run(self._status.services, app)

    async def logs_contain(self, service_id: str, marker: str) -> bool:
        """True if the service's logs (stdout and stderr) contain marker; False also when it is gone."""
        return await self._engine.run(self._status.logs_contain, service_id, marker)

    # -- one owner per namespace ------------------------------------------------------------------

    async def claim_namespace(self, holder: str, ttl: float) -> str | None:
        """Take this namespace's owner lease on the engine (a labelled swarm config, changed only by
        version-checked updates); None when we hold it now, else who does. A lease in `holder`'s own
        name (a copy of us that died) or not renewed for `ttl` seconds is taken over."""
        return await self._engine.run(self._lease.claim, holder, ttl)

    async def renew_namespace(self, holder: str) -> bool:
        """Renew our owner lease; False when it is no longer ours (taken over, or removed)."""
        return await self._engine.run(self._lease.renew, holder)

    async def release_namespace(self, holder: str) -> None:
        """Give the owner lease back (only if it is still ours)."""
        await self._engine.run(self._lease.release, holder)

    # -- events and probes ----------------------------------------------------------------------

    def events(self, since: float | None = None) -> AsyncGenerator[EngineEvent, None]:
        """Follow engine events about our containers (die, oom, kill, stop) and services (remove).

        Use with `contextlib.aclosing` (or cancel the consuming task): closing the generator closes
        the engine stream, which ends the reader thread. `since` replays events from that unix time.
        """
        return follow(self._engine, since)

    async def probe_http(self, endpoint: str, path: str) -> bool:
        """True when GET http://<endpoint><path> answers 2xx (the readiness probe of an instance)."""
        return await self._probe.http(endpoint, path)

    async def close(self) -> None:
        """Release the thread pool, the engine connection and the probe client."""
        if self._engine.closed:
            return
        self._engine.closed = True
        await self._probe.close()
        await self._engine.release()
