"""Engine events about our containers and services: a reader thread follows the engine's stream for asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator
from typing import Any

import docker.errors

from swarmpool.swarm.engine import Engine
from swarmpool.swarm.model import (LABEL_APP, LABEL_ID, LABEL_OWNER, LABEL_SWARM_SERVICE_ID, EngineEvent,
                                   SwarmUnavailable)

CONTAINER_ACTIONS = frozenset({"die", "oom", "kill", "stop"})
SERVICE_ACTIONS = frozenset({"remove"})


async def follow(engine: Engine, since: float | None = None) -> AsyncGenerator[EngineEvent, None]:
    """Follow engine events about our containers (die, oom, kill, stop) and services (remove).

    Use with `contextlib.aclosing` (or cancel the consuming task): closing the generator closes
    the engine stream, which ends the reader thread. `since` replays events from that unix time.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[EngineEvent | BaseException | None] = asyncio.Queue()
    filters = {"type": ["container", "service"], "event": sorted(CONTAINER_ACTIONS | SERVICE_ACTIONS)}
    kwargs: dict[str, Any] = {"decode": True, "filters": filters}
    if since is not None:
        kwargs["since"] = since
    try:
        stream = await engine.run(lambda: engine.client().events(**kwargs))
    except docker.errors.DockerException as e:
        raise SwarmUnavailable(f"cannot follow Docker events: {e}") from e
    closing = threading.Event()

    def put(item: EngineEvent | BaseException | None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def pump() -> None:
        try:
            for raw in stream:
                event = parse_event(engine.namespace, raw)
                if event is not None:
                    put(event)
        except Exception as e:
            if not closing.is_set():
                put(SwarmUnavailable(f"Docker event stream broke: {e}"))
        finally:
            put(None)

    reader = threading.Thread(target=pump, name=f"swarm-events-{engine.namespace}", daemon=True)
    reader.start()
    try:
        while True:
            item = await queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        closing.set()
        stream.close()
        await asyncio.to_thread(reader.join, 5.0)


def parse_event(namespace: str, raw: dict[str, Any]) -> EngineEvent | None:
    """The event of `namespace` in one decoded engine event; None when it is not about ours or not watched."""
    kind = raw.get("Type", "")
    action = raw.get("Action", "")
    actor = raw.get("Actor") or {}
    attrs = actor.get("Attributes") or {}
    at = raw["timeNano"] / 1e9 if "timeNano" in raw else float(raw.get("time", 0))
    if kind == "container" and action in CONTAINER_ACTIONS:
        if attrs.get(LABEL_OWNER) != namespace:
            return None
        code = attrs.get("exitCode")
        return EngineEvent(
            type=kind,
            action=action,
            at=at,
            app=attrs.get(LABEL_APP, ""),
            id=attrs.get(LABEL_ID, ""),
            service_id=attrs.get(LABEL_SWARM_SERVICE_ID, ""),
            container_id=actor.get("ID", ""),
            exit_code=int(code) if code not in (None, "") else None,
        )
    if kind == "service" and action in SERVICE_ACTIONS:
        # Service events carry only the name, not labels: <namespace>-<app>-<handle>. The id is not in it
        # (nor, in an older version's names, taken from it): who needs the instance maps the service id.
        prefix = namespace + "-"
        name = attrs.get("name", "")
        if not name.startswith(prefix) or "-" not in name[len(prefix):]:
            return None
        app = name[len(prefix):].rsplit("-", 1)[0]
        return EngineEvent(type=kind, action=action, at=at, app=app, id="", service_id=actor.get("ID", ""))
    return None
