"""Fixtures for tests against the real Docker swarm: a throwaway namespace, the echo image, a Swarm adapter."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import pytest_asyncio

from swarmpool.ids import new_instance_id  # noqa: F401  (tests/integration/test_swarm.py imports it from here)
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import LABEL_OWNER
from tests.fixtures import random_namespace, wait_for  # noqa: F401  (wait_for: re-exported)

ROOT = Path(__file__).resolve().parent.parent
ECHO_IMAGE = "swarmpool/echo:latest"


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A plain docker client for tests that poke the engine directly; a missing swarm manager is a failure."""
    try:
        client = docker.from_env()
        swarm_state = client.info().get("Swarm", {}).get("LocalNodeState")
    except docker.errors.DockerException as e:
        pytest.fail(f"no Docker engine (start dockerd; .ci/run does): {e}")
    if swarm_state != "active":
        pytest.fail("Docker engine is not in swarm mode (docker swarm init --advertise-addr 127.0.0.1)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def swarm_namespace() -> str:
    """A namespace unique to this test session, so parallel sessions never touch each other's services."""
    return random_namespace()


@pytest.fixture(scope="session")
def echo_image(docker_client: docker.DockerClient) -> str:
    """The echo test app image, built offline (apps/echo/build.sh) when missing."""
    try:
        docker_client.images.get(ECHO_IMAGE)
    except docker.errors.ImageNotFound:
        subprocess.run([str(ROOT / "apps/echo/build.sh")], check=True, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return ECHO_IMAGE


def remove_namespace(client: docker.DockerClient, namespace: str, timeout: float = 30.0) -> None:
    """Remove every service and container labelled with namespace, and wait until the containers are gone."""
    label = f"{LABEL_OWNER}={namespace}"
    for service in client.services.list(filters={"label": label}):
        try:
            service.remove()
        except docker.errors.NotFound:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        containers = client.containers.list(all=True, filters={"label": label}, ignore_removed=True)
        if not containers:
            _remove_networks(client, namespace, deadline)
            return
        for container in containers:
            if container.status not in ("running", "created", "restarting", "removing"):
                try:
                    container.remove(force=True)
                except docker.errors.APIError:
                    pass
        time.sleep(0.2)
    raise AssertionError(f"containers of namespace {namespace} still present after {timeout}s")


def _remove_networks(client: docker.DockerClient, namespace: str, deadline: float) -> None:
    """The namespace's instance bridges of every class and generation (and their config-only networks) go once no
    container uses them."""
    prefixes = (f"{namespace}-instances", f"{namespace}-internet")  # one bridge per egress class
    found = {n["Name"] for prefix in prefixes for n in client.api.networks(filters={"name": prefix})
             if n["Name"].startswith(prefix)}
    # the swarm-scoped bridges before the config-only networks they are made from
    for name in sorted(found, key=lambda n: n.endswith("-config")):
        while True:
            try:
                client.api.remove_network(name)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError:  # active endpoints: tasks still shutting down
                if time.monotonic() > deadline:  # or a dead copy an engine restart keeps (moby#38318)
                    break
                time.sleep(0.2)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def swarm(docker_client: docker.DockerClient, swarm_namespace: str) -> AsyncIterator[Swarm]:
    """A Swarm adapter on the session's namespace; everything labelled with it is removed at the end."""
    adapter = Swarm(swarm_namespace)
    try:
        await adapter.ping()
        await adapter.ensure_swarm()
        yield adapter
    finally:
        try:
            await adapter.remove_all()
        finally:
            await adapter.close()
            await asyncio.to_thread(remove_namespace, docker_client, swarm_namespace)
