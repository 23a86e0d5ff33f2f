"""Fixtures every test may use; none needs Docker or NATS (those live in tests/fixtures_real.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling  # a test dependency (pyproject.toml)

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


# Parallel runs (pytest-xdist, as bootstrap.sh runs the suite): a module's tests stay on one worker (its
# module-scoped stacks are warmed once); the tests that share a fixed resource or a heavy one run on one worker,
# one after another: the cluster lane (its two namespaced engines have fixed names; the 2-node lecture smoke builds
# the same swarm) and Pluto (a start takes a core for a minute); each bench smoke is a group of its own.
# xdist's own `xdist_group` marker does not reach its scheduler under pytest 9 (the node id it rewrites is no longer
# what is sent), so the controller groups by node id.
def xdist_group_of(nodeid: str) -> str:
    """The group a test runs in on parallel workers."""
    path, _, name = nodeid.partition("::")
    if path.endswith("/test_cluster.py") or name.endswith("[bench-lecture-cluster]"):
        return "cluster"
    if path.endswith("/test_pluto.py") or name.endswith("[bench-pluto]"):
        return "pluto"
    if path.endswith("/test_bench_smoke.py"):
        return nodeid
    return path


class LaneScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scope scheduling, by xdist_group_of."""

    def _split_scope(self, nodeid: str) -> str:
        return xdist_group_of(nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Every group to one worker (`--dist loadgroup`, as bootstrap.sh passes it)."""
    return LaneScheduling(config, log) if config.getvalue("dist") == "loadgroup" else None


# the longest groups first, so that the run does not wait on one started last (a stable sort: modules keep theirs)
ORDER = ("cluster", "pluto", "faults", "bench_smoke", "e2e", "docker", "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the items by lane, the longest first (xdist hands the groups out in this order)."""
    def rank(item: pytest.Item) -> int:
        return next(i for i, lane in enumerate(ORDER) if not lane or item.get_closest_marker(lane) is not None)
    items.sort(key=rank)
