"""The swarm port without Docker, for integration tests whose subject is not Docker: each instance is the echo
app's behaviour (apps/echo/app.py) served in the test process on a loopback port.

Everything else stays real (nats-server, every function, the gateway, its proxy, probes over HTTP), so a test of
claims, reloads, the reaper or links runs in seconds instead of waiting for containers. Tests of what Docker
does (services, labels, isolation, a container that dies) keep the real `Swarm`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import aiohttp
from aiohttp import web

from swarmpool.ids import new_handle
from swarmpool.swarm.model import EngineEvent, InstanceSpec, ServiceInfo, TaskStatus

NODE = "local"


def _load_echo() -> ModuleType:
    """apps/echo/app.py (its handlers that do not depend on the prefix are used as they are)."""
    spec = importlib.util.spec_from_file_location("echo_app", Path(__file__).resolve().parents[1] / "apps/echo/app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ECHO = _load_echo()


def echo_app(prefix: str, instance_id: str) -> web.Application:
    """apps/echo/app.py's answers under `prefix`: healthz, page, ws (echo), big, POST echo, else a JSON echo."""
    async def get(request: web.Request) -> web.StreamResponse:
        if not request.path.startswith(prefix):
            raise web.HTTPNotFound()
        tail = request.path[len(prefix):]
        if tail == "healthz":
            return web.Response(text="ok")
        if tail == "page":
            return web.Response(text="<!doctype html><title>echo</title><p>echo</p>", content_type="text/html")
        if tail == "ws":
            return await ECHO.websocket(request)
        if tail == "big":
            return await ECHO.big(request)
        return web.json_response({"id": instance_id, "hostname": "local", "path": request.path,
                                  "headers": dict(request.headers)})

    async def post(request: web.Request) -> web.Response:
        if request.path != prefix + "echo":
            raise web.HTTPNotFound()
        return web.Response(body=await request.read(), content_type=request.content_type)

    app = web.Application()
    app.router.add_get("/{tail:.*}", get)
    app.router.add_post("/{tail:.*}", post)
    return app


PORTS = range(20000, 30000)  # below the kernel's ephemeral range (32768-): never a port free_port() just handed a
# gateway that has yet to bind it, nor one Docker publishes (30000-32767)


async def _listen(runner: web.AppRunner) -> int:
    """Serve `runner` on a free port of PORTS; return the port."""
    for _ in range(100):
        port = random.choice(PORTS)
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
            return port
        except OSError:  # in use
            await site.stop()
    raise OSError("no free port for a local instance")


@dataclass
class _Instance:
    info: ServiceInfo
    runner: web.AppRunner | None
    status: TaskStatus
    log: str = ""


@dataclass
class LocalSwarm:
    """A `SwarmPort` whose instances are in-process echo apps; `kill` stands in for a container that dies."""

    namespace: str
    create_delay: tuple[float, float] = (0.02, 0.15)  # seconds a create takes (random in this range), as an engine's
    _instances: dict[str, _Instance] = field(default_factory=dict)
    _held: bool = False  # creates wait for a permit (an engine still busy starting), see hold()
    _permits: int = 0
    _gate: asyncio.Condition = field(default_factory=asyncio.Condition)
    _events: asyncio.Queue[EngineEvent] = field(default_factory=asyncio.Queue)
    _http: aiohttp.ClientSession | None = None

    def hold(self) -> None:
        """From now on a create waits until `release` lets it through (a test's clicks meet an empty pool,
        however quick the starts would be)."""
        self._held, self._permits = True, 0

    async def release(self, n: int | None = None) -> None:
        """Let `n` more waiting or future creates through (None: all, and stop holding)."""
        async with self._gate:
            if n is None:
                self._held = False
            else:
                self._permits += n
            self._gate.notify_all()

    async def create(self, spec: InstanceSpec) -> str:
        async with self._gate:
            await self._gate.wait_for(lambda: not self._held or self._permits > 0)
            if self._held:
                self._permits -= 1
        await asyncio.sleep(random.uniform(*self.create_delay))
        handle = spec.handle or new_handle()
        service_id = f"local-{handle}"
        runner = web.AppRunner(echo_app(spec.env.get("SWARMPOOL_PREFIX", "/"), spec.id), access_log=None,
                               shutdown_timeout=0.1)
        await runner.setup()
        port = await _listen(runner)
        info = ServiceInfo(service_id=service_id, name=f"{self.namespace}-{spec.app}-{handle}", app=spec.app,
                           id=spec.id, created_at=time.time(), handle=handle)
        self._instances[service_id] = _Instance(info, runner, TaskStatus(
            state="running", endpoint=f"127.0.0.1:{port}", container_id=service_id, node=NODE), log="echo ready\n")
        return service_id

    def image_id(self, image: str) -> str:
        return "sha256:local-" + image

    async def resolve_image(self, image: str) -> str:
        return self.image_id(image)

    async def image_accounts(self, image: str) -> tuple[str, str, str] | None:
        return None

    async def network_info(self, name: str) -> dict[str, object] | None:
        return None

    async def remove(self, service_id: str) -> bool:
        found = self._instances.pop(service_id, None)
        if found is None:
            return False
        if found.runner is not None:
            await found.runner.cleanup()
        return True

    async def status(self, service_id: str) -> TaskStatus:
        found = self._instances.get(service_id)
        return found.status if found else TaskStatus(state="missing")

    async def list_ours(self, app: str | None = None) -> list[ServiceInfo]:
        infos = [i.info for i in self._instances.values() if app is None or i.info.app == app]
        return sorted(infos, key=lambda s: s.created_at)

    async def task_states(self) -> dict[str, TaskStatus]:
        return {sid: i.status for sid, i in self._instances.items()}

    async def nodes(self) -> dict[str, str]:
        return {NODE: "ready"}

    async def node_cores(self) -> dict[str, int]:
        return {}

    async def logs_contain(self, service_id: str, marker: str) -> bool:
        found = self._instances.get(service_id)
        return found is not None and marker in found.log

    async def probe_http(self, endpoint: str, path: str) -> bool:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2))
        try:
            async with self._http.get(f"http://{endpoint}{path}", allow_redirects=False) as response:
                return 200 <= response.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return False

    async def events(self, since: float | None = None) -> AsyncIterator[EngineEvent]:
        while True:
            yield await self._events.get()

    async def kill(self, instance_id: str) -> None:
        """The instance's "container" dies (exit 137): its server stops and a die event goes out, as Docker's."""
        sid, found = next((sid, i) for sid, i in self._instances.items() if i.info.id == instance_id)
        if found.runner is not None:
            await found.runner.cleanup()
            found.runner = None
        found.status = TaskStatus(state="failed", exit_code=137, container_id=sid, node=NODE)
        self._events.put_nowait(EngineEvent(type="container", action="die", at=time.time(), app=found.info.app,
                                            id=instance_id, service_id=sid, container_id=sid, exit_code=137))

    async def remove_all(self) -> int:
        ids = list(self._instances)
        for sid in ids:
            await self.remove(sid)
        return len(ids)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
