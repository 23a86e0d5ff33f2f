"""One namespace's connection to the Docker engine: the client, the threads its calls run in, ping, swarm init."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import docker
import docker.errors

from swarmpool.swarm.model import SwarmError, SwarmUnavailable

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def connect(**options: Any) -> docker.DockerClient:
    """A client of the engine in the environment (DOCKER_HOST, else the local socket); SwarmUnavailable without one."""
    try:
        return docker.from_env(**options)
    except docker.errors.DockerException as e:
        raise SwarmUnavailable(f"cannot reach the Docker engine (is dockerd running? DOCKER_HOST?): {e}") from e


class Engine:
    """The Docker client of one namespace (made on first use) and the thread pool its calls run in."""

    def __init__(self, namespace: str, client: docker.DockerClient | None = None, *, max_threads: int = 16) -> None:
        self.namespace = namespace
        self._client = client
        self._client_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="swarm")
        self.closed = False  # no engine call starts once set
        self._inflight: set[asyncio.Future[Any]] = set()

    def client(self) -> docker.DockerClient:
        """The Docker client, connected on first use; SwarmUnavailable when there is no engine to connect to."""
        with self._client_lock:
            if self._client is None:
                self._client = connect(max_pool_size=32)
            return self._client

    async def run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run a blocking engine call in the pool; a cancelled caller leaves it to finish (see settle)."""
        if self.closed:
            raise SwarmError("this Swarm adapter is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        # shield: a cancelled caller must not orphan a create that the engine still completes
        return await asyncio.shield(future)

    async def settle(self) -> None:
        """Wait for engine calls still running in threads (their callers may have been cancelled)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    async def release(self) -> None:
        """Shut the thread pool down and close the engine connection (set `closed` first)."""
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    def ping(self) -> None:
        """Raise SwarmUnavailable with a clear message if the engine cannot be reached."""
        try:
            self.client().ping()
        except docker.errors.DockerException as e:
            raise SwarmUnavailable(f"Docker engine did not answer a ping: {e}") from e
        except Exception as e:  # requests' connection errors are not DockerExceptions
            raise SwarmUnavailable(f"Docker engine did not answer a ping: {e}") from e

    def ensure_swarm(self) -> bool:
        """Initialise a single-node swarm (advertise 127.0.0.1) if none is active; True if it did."""
        client = self.client()
        try:
            info = client.info()
        except Exception as e:
            raise SwarmUnavailable(f"cannot read Docker engine info: {e}") from e
        swarm = info.get("Swarm") or {}
        state = swarm.get("LocalNodeState", "")
        if state == "active":
            if not swarm.get("ControlAvailable"):
                raise SwarmUnavailable("this Docker node is a swarm worker; swarmpool needs a manager node")
            return False
        if state not in ("inactive", ""):
            raise SwarmUnavailable(f"swarm is in state {state!r}; fix it with `docker swarm` first")
        log.info("initialising a single-node Docker swarm listening on 127.0.0.1 only")
        try:  # control (2377) and gossip (7946) on loopback; the data path says loopback too
            client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377", data_path_addr="127.0.0.1")
        except docker.errors.APIError as e:
            raise SwarmError(f"docker swarm init failed: {e.explanation or e}") from e
        return True
