"""What one reconcile pass asks the engine: `info` (a count of everything the engine holds, slow with hundreds of
containers) once per NODE_ID_TTL, not once per listing. A scripted engine client, no Docker."""

from __future__ import annotations

from typing import Any

from swarmpool.swarm import adapter as adapter_module
from swarmpool.swarm import model
from swarmpool.swarm import status as status_module
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.engine import Engine
from swarmpool.swarm.networks import Bridges
from swarmpool.swarm.status import NODE_CORES_TTL, NODE_ID_TTL, Status


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


class ClusterApi(Api):
    def tasks(self, filters: dict[str, Any]) -> list[dict[str, Any]]:
        labels = {"Labels": {model.LABEL_OWNER: "t"}}
        return [{"ServiceID": "s1", "NodeID": "w1", "CreatedAt": "2026-12-02T12:00:00.25Z",
                 "Spec": {"ContainerSpec": labels}, "Status": {"State": "running", "Timestamp": "2026-12-02T12:00:01.5Z"}},
                {"ServiceID": "s2", "NodeID": "w1", "CreatedAt": "2026-12-02T12:00:00Z",
                 "Spec": {"ContainerSpec": labels}, "Status": {"State": "preparing", "Timestamp": "2026-12-02T12:00:03Z"}}]

    def nodes(self) -> list[dict[str, Any]]:
        return [{"ID": "n2", "Status": {"State": "ready"}, "Description": {"Resources": {"NanoCPUs": 2_000_000_000}}},
                {"ID": "w1", "Status": {"State": "ready"}, "Description": {"Resources": {"NanoCPUs": 8_000_000_000}}},
                {"ID": "w2", "Status": {"State": "down"}}]


async def test_the_engine_says_each_nodes_cores_and_when_each_task_was_created_and_ran() -> None:
    client = Client()
    client.api = ClusterApi()
    swarm = Swarm("t", client=client)  # type: ignore[arg-type]
    assert await swarm.node_cores() == {"n2": 2, "w1": 8}  # a node that does not say its cores is left out
    tasks = swarm._status.task_states()
    assert tasks["s1"].created_at == model.parse_timestamp("2026-12-02T12:00:00.25Z")
    assert tasks["s1"].running_at is not None and tasks["s1"].running_at - tasks["s1"].created_at == 1.25
    assert tasks["s2"].running_at is None  # not running yet: its status time is not a start


class DownApi(Api):
    def __init__(self) -> None:
        self.listings = 0

    def nodes(self) -> list[dict[str, Any]]:
        self.listings += 1
        raise model.SwarmUnavailable("cannot reach the Docker engine")


async def test_an_engine_out_of_sight_leaves_the_cores_to_this_host_and_is_asked_once_per_ttl(monkeypatch: Any) -> None:
    client = Client()
    api = client.api = DownApi()
    swarm = Swarm("t", client=client)  # type: ignore[arg-type]
    now = [1000.0]
    monkeypatch.setattr(adapter_module.time, "monotonic", lambda: now[0])
    assert await swarm.node_cores() == {} and await swarm.node_cores() == {}  # top-ups go on (the host's cores)
    assert api.listings == 1
    now[0] += NODE_CORES_TTL + 1
    await swarm.node_cores()
    assert api.listings == 2
