"""Fixtures for the whole-stack tests: the Voila image, a module-wide namespace, Chromium."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import docker
import pytest

from tests.conftest import _NAMESPACES, random_namespace
from tests.e2e.support import NGINX, ensure_voila_image
from tests.e2e.support import chromium as launch_chromium


@pytest.fixture(scope="session")
def voila_image(docker_client: docker.DockerClient) -> str:
    """swarmpool/voila-demo:latest, built offline when missing (first run only, about a minute)."""
    if not os.path.exists(NGINX):
        pytest.fail(f"nginx is not installed ({NGINX}); apt-get install -y nginx")
    return ensure_voila_image()


@pytest.fixture(scope="module")
def module_namespace() -> str:
    """A fresh namespace shared by the tests of one module (one stack per module)."""
    name = random_namespace("e")
    _NAMESPACES.add(name)  # the session finalizer checks nothing of it is left behind
    return name


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Debian Chromium for the session; tests open their own contexts."""
    async with launch_chromium() as browser:
        yield browser
