"""Fixtures against the real things: a nats-server per session, the Docker swarm, the leftover check.

Only tests/integration/conftest.py and tests/e2e/conftest.py import these, so unit tests need
neither Docker nor NATS. A missing engine or nats-server fails those tests; it never skips them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator

import docker
import nats
import pytest
from nats.aio.client import Client as NATS

from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import EmbeddedNats
from swarmpool.swarm.model import LABEL_OWNER
from tests.docker_fixtures import docker_client, echo_image, remove_namespace, swarm, swarm_namespace
from tests.fixtures import register_namespace, take_namespaces

__all__ = ["docker_client", "echo_image", "nats_server", "nc", "nothing_left_behind", "store", "swarm",
           "swarm_namespace"]


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream, for the whole session, in the open mode (no credentials:
    tests use fresh namespaces the server cannot know in advance). Bus roles and their permissions
    are tested on servers of their own (tests/integration/test_bus_auth.py)."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"), auth=False)
    async with server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture
async def store(nc: NATS, subjects: Subjects) -> AsyncIterator[InstanceStore]:
    async with await InstanceStore.open(nc, subjects, time.time) as s:
        yield s


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(docker_client: docker.DockerClient, swarm_namespace: str) -> Iterator[None]:
    """After the suite: no service of any test namespace may remain, and their containers must go.

    Each conftest that imports this gets its own instance (pytest scopes conftest fixtures to their
    directory), so a whole-suite run checks once per directory at the end of the session; the
    namespaces registry is shared and each namespace is checked by whichever check runs first.
    """
    yield
    register_namespace(swarm_namespace)
    namespaces = set(take_namespaces())
    # one listing of each kind for all of them (hundreds of namespaces, most of which never touched Docker)
    services = [(s.attrs["Spec"].get("Labels", {}).get(LABEL_OWNER), s.name)
                for s in docker_client.services.list(filters={"label": LABEL_OWNER})]
    owners = {(c.get("Labels") or {}).get(LABEL_OWNER)  # the plain listing: no inspect per container
              for c in docker_client.api.containers(all=True, filters={"label": LABEL_OWNER})}
    networks = [n["Name"] for n in docker_client.api.networks()]
    left = sorted(name for owner, name in services if owner in namespaces)
    dirty = {owner for owner, _ in services} | owners | {ns for ns in namespaces for name in networks
                                                        if name.startswith((f"{ns}-instances", f"{ns}-internet"))}
    for ns in sorted(namespaces & dirty):
        remove_namespace(docker_client, ns)  # waits until containers are gone; fails if they stay
    assert not left, f"the suite left these behind: {left}"
