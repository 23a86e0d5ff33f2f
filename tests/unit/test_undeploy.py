"""`swarmpool undeploy` (swarm/stack.py Stack.remove) against a scripted engine API, no Docker: what a function host
does while the stack is removed must not outlive it."""

from __future__ import annotations

from typing import Any

from swarmpool.swarm.model import LABEL_OWNER
from swarmpool.swarm.stack import Stack


class Api:
    """A stack of one function host and one instance; the function host starts a replacement for the instance that
    is removed under it (it refills its pool), until its own service is removed."""

    def __init__(self) -> None:
        self.instances = {"i1"}
        self.control = {"fn"}
        self.removed: list[str] = []

    def services(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        names = self.instances if filters["label"] == f"{LABEL_OWNER}=lect" else self.control
        return [{"ID": n, "Spec": {"Name": f"lect-{n}"}} for n in sorted(names)]

    def remove_service(self, ident: str) -> None:
        self.removed.append(ident)
        if ident in self.instances:
            self.instances.discard(ident)
            if self.control:  # the function host still runs: it starts another instance
                self.instances.add(f"{ident}+")
        self.control.discard(ident)

    def networks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def secrets(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def configs(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        return []

    def volumes(self, filters: dict[str, str]) -> dict[str, Any]:
        return {"Volumes": []}

    def containers(self, all: bool, filters: dict[str, str]) -> list[dict[str, Any]]:
        return []


class Client:
    def __init__(self) -> None:
        self.api = Api()


def test_undeploy_removes_the_instances_a_function_host_started_while_it_was_being_removed() -> None:
    client = Client()
    left = Stack("lect", client=client).remove(timeout=2)  # type: ignore[arg-type]
    assert left == []
    assert client.api.instances == set() and client.api.control == set()
    assert client.api.removed[:2] == ["i1", "fn"] and "i1+" in client.api.removed
