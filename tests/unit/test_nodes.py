"""Losing a node (issue 10, section 4): which records are lost with their node, and which nodes are
recorded. Pure decisions: no Docker, no NATS."""

from __future__ import annotations

import msgspec
import pytest

from swarmpool.bus.messages import TRANSITIONS, Instance
from swarmpool.functions.policy import FOUND_DEAD, failed_start, lost_node_instances, placed_nodes
from swarmpool.ids import new_instance_id

NOW = 10_000.0
NODES = {"m1": "ready", "w1": "down", "w2": "unknown", "w3": "disconnected"}


def inst(state: str, service_id: str = "svc", node: str = "") -> Instance:
    return msgspec.convert(dict(id=new_instance_id(), app="echo", state=state, created_at=NOW - 100,
                                service_id=service_id, node=node), Instance)


@pytest.mark.parametrize("record, node, lost", [
    ("ready", "m1", False),
    ("ready", "w1", True),  # a warm instance on a Down node fails and is replaced elsewhere
    ("claimed", "w1", True),  # a session on a Down node ends (retiring: the session-ended page)
    ("starting", "w1", True),
    ("ready", "w2", True),  # unknown is not ready
    ("claimed", "w3", True),
    ("ready", "gone", True),  # a node removed from the swarm
    ("ready", "", False),  # not placed yet: nothing to say
    ("retiring", "w1", False),  # already on its way out
    ("failed", "w1", False),
])
def test_instances_on_lost_nodes(record: str, node: str, lost: bool) -> None:
    r = inst(record)
    found = lost_node_instances([r], {"svc": node} if node else {}, NODES)
    assert [x for x, _ in found] == ([r] if lost else [])
    if lost:
        reason = found[0][1]
        assert FOUND_DEAD in reason and node[:12] in reason
        assert not failed_start(reason)  # a lost node is no reason to back off starting


def test_a_task_on_a_down_node_that_still_reports_running_is_lost() -> None:
    """The decision uses the node's state only: the task's own state is what the Down node last said."""
    r = inst("ready", node="m1")  # recorded on another node: the task listing is newer than the record
    assert [x for x, _ in lost_node_instances([r], {"svc": "w1"}, NODES)] == [r]


def test_records_without_a_service_are_not_lost() -> None:
    r = inst("starting", service_id="")
    assert lost_node_instances([r], {"": "w1"}, NODES) == []


def test_placed_nodes_names_only_records_whose_node_is_new() -> None:
    fresh, known, gone, ended = inst("starting", "a"), inst("ready", "b", node="m1"), inst("claimed", "c"), \
        inst("retiring", "d")
    tasks = {"a": "m1", "b": "m1", "d": "m1"}
    assert placed_nodes([fresh, known, gone, ended], tasks) == {fresh.key: "m1"}


def test_old_records_decode_without_a_node_and_a_ready_record_may_learn_its_node() -> None:
    old = msgspec.json.decode(b'{"id":"x","app":"echo","state":"ready","created_at":1.0}', type=Instance)
    assert old.node == ""
    assert "ready" in TRANSITIONS["ready"]  # ready -> ready: the node is written without leaving the pool
