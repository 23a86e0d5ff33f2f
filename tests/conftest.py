"""Shared fixtures: a real nats-server per test session, a fresh namespace per test."""

from __future__ import annotations

import random
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import nats
import pytest
from nats.aio.client import Client as NATS

from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import EmbeddedNats
from tests.docker_fixtures import docker_client, echo_image, remove_namespace, swarm, swarm_namespace  # noqa: F401


def random_namespace(prefix: str = "t") -> str:
    return prefix + "".join(random.choices(string.ascii_lowercase, k=6))


@pytest.fixture(scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    """A real nats-server with JetStream, for the whole session."""
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    async with server:
        yield server


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


_NAMESPACES: set[str] = set()


@pytest.fixture
def namespace() -> str:
    """A fresh namespace (subjects, buckets, service labels) for one test."""
    name = random_namespace()
    _NAMESPACES.add(name)
    return name


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind(docker_client: docker.DockerClient, swarm_namespace: str) -> Iterator[None]:
    """After the suite: no service of any test namespace may remain, and their containers must go."""
    yield
    _NAMESPACES.add(swarm_namespace)
    left = []
    for ns in sorted(_NAMESPACES):
        label = f"swarmpool.owner={ns}"
        left += [s.name for s in docker_client.services.list(filters={"label": label})]
        remove_namespace(docker_client, ns)  # waits until containers are gone; fails if they stay
    assert not left, f"the suite left these behind: {left}"


@pytest.fixture
def subjects(namespace: str) -> Subjects:
    return Subjects(namespace)


@pytest.fixture
async def store(nc: NATS, subjects: Subjects) -> AsyncIterator[InstanceStore]:
    async with await InstanceStore.open(nc, subjects, time.time) as s:
        yield s


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
