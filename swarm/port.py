"""The narrow port through which functions reach the swarm: what they call, and nothing else.

`swarmpool.swarm.adapter.Swarm` implements it against the Docker engine; unit tests pass a fake.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from swarmpool.swarm.model import EngineEvent, InstanceSpec, ServiceInfo, TaskStatus


class SwarmPort(Protocol):
    """Instance services on a swarm, as the functions use them."""

    async def create(self, spec: InstanceSpec) -> str:
        """Start one instance service; its service id."""
        ...

    def image_id(self, image: str) -> str:
        """The id `image` (as the catalogue names it) had at the last create here; "" if none yet."""
        ...

    async def resolve_image(self, image: str) -> str:
        """The id `image` (as the catalogue names it) stands for now on this node; "" if absent."""
        ...

    async def image_accounts(self, image: str) -> tuple[str, str, str] | None:
        """The image's own user, /etc/passwd and /etc/group (text) on this node; None if the image is absent."""
        ...

    async def network_info(self, name: str) -> dict[str, object] | None:
        """The engine's inspection of the network named exactly `name`; None if there is none."""
        ...

    async def remove(self, service_id: str) -> bool:
        """Remove a service; False when it was already gone."""
        ...

    async def status(self, service_id: str) -> TaskStatus:
        """Where the service's task is ("missing" once the service is gone)."""
        ...

    async def list_ours(self, app: str | None = None) -> list[ServiceInfo]:
        """Every service of this namespace (optionally of one app), oldest first."""
        ...

    async def task_states(self) -> dict[str, TaskStatus]:
        """The newest task of every service of this namespace, by service id, in one listing."""
        ...

    async def nodes(self) -> dict[str, str]:
        """Node id -> state (ready, down, unknown, ...) of every swarm node, in one listing."""
        ...

    async def node_cores(self) -> dict[str, int]:
        """Node id -> its cores, as the swarm lists its nodes (nodes it does not say are left out)."""
        ...

    async def logs_contain(self, service_id: str, marker: str) -> bool:
        """Whether the service's log has shown `marker`."""
        ...

    async def probe_http(self, endpoint: str, path: str) -> bool:
        """Whether GET http://<endpoint><path> answers 2xx."""
        ...

    def events(self, since: float | None = None) -> AsyncIterator[EngineEvent]:
        """Engine events about our containers and services, as they happen."""
        ...
