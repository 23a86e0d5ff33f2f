"""Fixtures every test may use; none needs Docker or NATS (those live in tests/fixtures_real.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from swarmpool.bus.subjects import Subjects
from tests.fixtures import random_namespace, register_namespace


@pytest.fixture
def namespace() -> str:
    """A fresh namespace (subjects, buckets, service labels) for one test."""
    return register_namespace(random_namespace())


@pytest.fixture
def subjects(namespace: str) -> Subjects:
    return Subjects(namespace)


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
