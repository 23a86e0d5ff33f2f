"""What one reconcile pass asks the engine: `info` (a count of everything the engine holds, slow with hundreds of
containers) once per NODE_ID_TTL, not once per listing. A scripted engine client, no Docker."""

from __future__ import annotations

from typing import Any

from swarmpool.swarm import status as status_module
from swarmpool.swarm.engine import Engine
from swarmpool.swarm.networks import Bridges
from swarmpool.swarm.status import NODE_ID_TTL, Status


class Api:
    def tasks(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    def containers(self, all: bool, filters: dict[str, Any]) -> list[dict[str, Any]]:
        return []

    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "n1", "Status": {"State": "ready"}}, {"ID": "n2", "Status": {"State": "down"}}]


class Client:
    def __init__(self) -> None:
        self.api = Api()
        self.infos = 0
        self.node = "n2"

    def info(self) -> dict[str, Any]:
        self.infos += 1
        return {"Swarm": {"NodeID": self.node}}


def test_passes_ask_the_engine_for_its_node_id_once_per_ttl(monkeypatch: Any) -> None:
    client = Client()
    engine = Engine("t", client=client)  # type: ignore[arg-type]
    status = Status(engine, Bridges(engine))
    now = [1000.0]
    monkeypatch.setattr(status_module.time, "monotonic", lambda: now[0])
    for _ in range(5):  # five reconcile passes in a row: tasks and nodes each
        assert status.task_states() == {}
        assert status.nodes() == {"n1": "ready", "n2": "ready"}  # this engine's node is ready: we talk to it
    assert client.infos == 1
    client.node = "n3"  # left its swarm and joined another: seen again after the TTL
    now[0] += NODE_ID_TTL + 1
    assert status.nodes()["n3"] == "ready" and client.infos == 2
