"""Fixtures for the whole-stack tests: the Voila image, a module-wide namespace, Chromium."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest

from bench.support import NGINX, ensure_voila_image
from bench.support import chromium as launch_chromium
from tests.fixtures import random_namespace, register_namespace
from tests.fixtures_real import (  # noqa: F401
    docker_client,
    echo_image,
    nats_server,
    nc,
    nothing_left_behind,
    store,
    swarm,
    swarm_namespace,
)


@pytest.fixture(scope="session")
def voila_image(docker_client: docker.DockerClient) -> str:
    """swarmpool/voila-demo:latest, built offline when missing (first run only, about a minute)."""
    if not os.path.exists(NGINX):
        pytest.fail(f"nginx is not installed ({NGINX}); apt-get install -y nginx")
    return ensure_voila_image()


@pytest.fixture(scope="module")
def module_namespace() -> str:
    """A fresh namespace shared by the tests of one module (one stack per module)."""
    return register_namespace(random_namespace("e"))  # the leftover check at the end looks for it


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Debian Chromium for the session; tests open their own contexts."""
    async with launch_chromium() as browser:
        yield browser
