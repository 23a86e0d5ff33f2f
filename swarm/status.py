"""What the engine says of our services: one service's task, every task at once, the nodes, services by label, logs."""

from __future__ import annotations

import time
from typing import Any

import docker.errors

from swarmpool.swarm.engine import Engine
from swarmpool.swarm.model import (LABEL_APP, LABEL_GUARD_PORT, LABEL_HANDLE, LABEL_ID, LABEL_OWNER, LABEL_PORT,
                                   ServiceInfo, TaskStatus, parse_timestamp)
from swarmpool.swarm.networks import Bridges
from swarmpool.swarm.tasks import EXIT_CODE_STATES

NODE_CORES_TTL = 60.0  # seconds the nodes' cores of the last nodes listing are reused by the start budget
NODE_ID_TTL = 30.0  # seconds this engine's swarm node id is reused (it changes only when the node leaves its swarm)


def endpoint(service: dict[str, Any], status: dict[str, Any]) -> str:
    """Where a running task of `service` is reached: its published port on 127.0.0.1, else name and port."""
    spec = service.get("Spec", {})
    ports = (spec.get("EndpointSpec") or {}).get("Ports") or []
    if ports:
        published = (status.get("PortStatus") or {}).get("Ports") or []
        for port in published:
            if port.get("PublishedPort"):
                return f"127.0.0.1:{port['PublishedPort']}"
        return ""
    labels = spec.get("Labels") or {}
    # a guarded instance is reached only where the guard's redirect answers, so never before its rules
    port = labels.get(LABEL_GUARD_PORT) or labels.get(LABEL_PORT, "")
    return f"{spec.get('Name', '')}:{port}" if port else ""


def _task_order(task: dict[str, Any]) -> tuple[int, str]:
    """Orders a service's tasks, the newest last."""
    return (task.get("Version", {}).get("Index", 0), task.get("CreatedAt", ""))


class Status:
    """Reads where the services of one namespace and their tasks are (blocking calls: run them in the engine's pool)."""

    def __init__(self, engine: Engine, bridges: Bridges) -> None:
        self._engine = engine
        self._bridges = bridges  # a task's error may say that a bridge is dead
        self._node_id: tuple[str, float] | None = None  # this engine's node id, and when it was read
        self.cores: tuple[dict[str, int], float] | None = None  # node id -> cores of the last nodes listing, its time

    def status(self, service_id: str) -> TaskStatus:
        """The state of the service's (single, newest) task; "missing" once the service is gone."""
        return self.status_and_service(service_id)[0]

    def status_and_service(self, service_id: str) -> tuple[TaskStatus, dict[str, Any] | None]:
        """The service's task state (`status`) and the engine's inspection of the service (None once it is gone)."""
        api = self._engine.client().api
        try:
            service = api.inspect_service(service_id)
            tasks = api.tasks(filters={"service": service_id})
        except docker.errors.NotFound:
            return TaskStatus(state="missing"), None
        if not tasks:
            return TaskStatus(state="new"), service
        return self.task_status(service, max(tasks, key=_task_order)), service

    def task_status(self, service: dict[str, Any], task: dict[str, Any]) -> TaskStatus:
        """Where `task` of `service` is (its state, endpoint once running, exit code, error, node)."""
        status = task.get("Status") or {}
        container = status.get("ContainerStatus") or {}
        state = status.get("State", "new")
        reached = ""
        if state == "running":
            reached = endpoint(service, status)
        exit_code = container.get("ExitCode")
        return TaskStatus(
            state=state,
            endpoint=reached,
            exit_code=exit_code if state in EXIT_CODE_STATES else None,
            error=self._bridges.note_task_error(status.get("Err", "") or ""),
            container_id=container.get("ContainerID", "") or "",
            node=task.get("NodeID", "") or "",
        )

    def newest_tasks(self) -> dict[str, dict[str, Any]]:
        """The newest task of every service of ours, by service id, in one task listing (nothing else asked)."""
        namespace = self._engine.namespace
        tasks = [t for t in self._engine.client().api.tasks(filters={"name": f"{namespace}-"})
                 if ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(LABEL_OWNER)
                 == namespace]
        newest: dict[str, dict[str, Any]] = {}
        for task in tasks:
            known = newest.get(task.get("ServiceID", ""))
            if known is None or _task_order(task) > _task_order(known):
                newest[task.get("ServiceID", "")] = task
        return newest

    def task_states(self) -> dict[str, TaskStatus]:
        """The newest task of every service of ours, by service id: one task listing, one listing of
        this node's containers (after an engine restart the swarm reports dead tasks as running
        until its agent catches up; the container on this node already tells the truth)."""
        namespace = self._engine.namespace
        api = self._engine.client().api
        newest = self.newest_tasks()
        node = self._local_node()
        containers = {c["Id"]: c for c in api.containers(all=True, filters={"label": f"{LABEL_OWNER}={namespace}"})}
        states = {}
        for service_id, task in newest.items():
            status = task.get("Status") or {}
            container_id = (status.get("ContainerStatus") or {}).get("ContainerID", "") or ""
            state, error = status.get("State", "new"), self._bridges.note_task_error(status.get("Err", "") or "")
            exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
            if state == "running" and node and task.get("NodeID") == node:
                container = containers.get(container_id)
                if container is None or container.get("State") != "running":
                    state = "failed"
                    error = f"container {container.get('State', 'gone') if container else 'gone'} on this node"
                    exit_code = None
            states[service_id] = TaskStatus(
                state=state, exit_code=exit_code if state in EXIT_CODE_STATES else None,
                error=error, container_id=container_id, node=task.get("NodeID", "") or "",
                created_at=parse_timestamp(task.get("CreatedAt", "")),
                running_at=(parse_timestamp(status.get("Timestamp", "")) or None) if state == "running" else None)
        return states

    def _local_node(self) -> str:
        """The swarm node id of this engine: `info` costs the engine a count of everything it holds (a tenth
        of a second with hundreds of containers), so a reconcile pass asks at most every NODE_ID_TTL seconds."""
        now = time.monotonic()
        if self._node_id is None or now - self._node_id[1] > NODE_ID_TTL:
            self._node_id = (((self._engine.client().info().get("Swarm") or {}).get("NodeID")) or "", now)
        return self._node_id[0]

    def nodes(self) -> dict[str, str]:
        """Node id -> state (ready, down, unknown, disconnected) of every node of the swarm; this engine's is ready."""
        client = self._engine.client()
        listed = client.api.nodes()
        states = {n["ID"]: ((n.get("Status") or {}).get("State") or "unknown") for n in listed}
        cores = {n["ID"]: int((((n.get("Description") or {}).get("Resources") or {}).get("NanoCPUs") or 0) // 10**9)
                 for n in listed}
        self.cores = ({node: n for node, n in cores.items() if n > 0}, time.monotonic())
        here = self._local_node()
        if here:
            states[here] = "ready"
        return states

    def services(self, app: str | None = None) -> list[ServiceInfo]:
        """Our services (label owner == namespace), optionally of one app, oldest first."""
        labels = [f"{LABEL_OWNER}={self._engine.namespace}"] + ([f"{LABEL_APP}={app}"] if app else [])
        infos = []
        for s in self._engine.client().api.services(filters={"label": labels}):
            spec_labels = s.get("Spec", {}).get("Labels") or {}
            infos.append(
                ServiceInfo(
                    service_id=s["ID"],
                    name=s.get("Spec", {}).get("Name", ""),
                    app=spec_labels.get(LABEL_APP, ""),
                    id=spec_labels.get(LABEL_ID, ""),
                    created_at=parse_timestamp(s.get("CreatedAt", "")),
                    handle=spec_labels.get(LABEL_HANDLE, ""),
                )
            )
        return sorted(infos, key=lambda i: i.created_at)

    def logs_contain(self, service_id: str, marker: str) -> bool:
        """True if the service's logs (stdout and stderr) contain marker; False also when it is gone."""
        try:
            data = self._engine.client().api.service_logs(service_id, stdout=True, stderr=True, follow=False)
        except docker.errors.NotFound:
            return False
        raw = data if isinstance(data, bytes) else b"".join(data)
        return marker.encode() in raw
