"""The gateway's route table: only claimed instances are routable, fed by records and claim replies."""

from __future__ import annotations

import msgspec
import pytest

from swarmpool.bus.messages import Instance
from swarmpool.bus.spec import AppSpec, Catalogue
from swarmpool.gateway.routing import Route, RouteTable
from swarmpool.ids import new_instance_id, valid_id

CATALOGUE = Catalogue(apps={
    "echo": AppSpec(name="echo", image="echo:latest", port=8000),
    "plain": AppSpec(name="plain", image="plain:latest", port=8000, strip_prefix=True),
})


def record(state: str, app: str = "echo", endpoint: str = "10.0.0.5:8000", **fields: object) -> Instance:
    claimed_at = 2.0 if state in ("claimed", "retiring") else None
    return msgspec.convert({"id": new_instance_id(), "app": app, "state": state, "endpoint": endpoint,
                            "created_at": 1.0, "claimed_at": claimed_at, **fields}, Instance)


@pytest.fixture
def table() -> RouteTable:
    return RouteTable(CATALOGUE)


@pytest.mark.parametrize(("text", "valid"), [
    pytest.param(new_instance_id(), True, id="a-new-id"),  # a named id: the same in every xdist worker
    ("a" * 26, True),
    ("a" * 25, False),
    ("a" * 27, False),
    ("A" * 26, False),
    ("1" * 26, False),  # not in the base32 alphabet
    ("a" * 25 + "/", False),
    ("", False),
])
def test_valid_id(text: str, valid: bool) -> None:
    assert valid_id(text) is valid


def test_only_claimed_instances_are_routed(table: RouteTable) -> None:
    starting, ready, claimed = record("starting"), record("ready"), record("claimed")
    table.fill([starting, ready, claimed])
    assert len(table) == 1
    assert claimed.id in table and ready.id not in table and starting.id not in table
    assert table.get(claimed.id) == Route(app="echo", endpoint="10.0.0.5:8000")


def test_a_claimed_record_without_an_endpoint_is_not_routed(table: RouteTable) -> None:
    table.on_change(None, record("claimed", endpoint=""))
    assert len(table) == 0


def test_strip_prefix_comes_from_the_catalogue(table: RouteTable) -> None:
    plain = record("claimed", app="plain")
    table.on_change(None, plain)
    assert table.get(plain.id) == Route(app="plain", endpoint="10.0.0.5:8000", strip_prefix=True)
    unknown = record("claimed", app="gone-from-the-catalogue")
    table.on_change(None, unknown)
    route = table.get(unknown.id)
    assert route is not None and not route.strip_prefix


def test_retiring_or_deleted_removes_the_route_and_tells_the_listeners(table: RouteTable) -> None:
    removed: list[str] = []
    table.on_removed(removed.append)
    first, second = record("claimed"), record("claimed")
    table.fill([first, second])
    table.on_change(first, msgspec.structs.replace(first, state="retiring"))
    table.on_change(second, None)
    assert len(table) == 0
    assert removed == [first.id, second.id]
    assert table.ended_app(first.id) == "echo" and table.ended_app(second.id) == "echo"


def test_a_claim_reply_routes_before_the_record_arrives(table: RouteTable) -> None:
    instance_id = new_instance_id()
    table.add_claimed(instance_id, "echo", "10.0.0.9:8000")
    assert table.get(instance_id) == Route(app="echo", endpoint="10.0.0.9:8000")
    # the mirror lags: it still shows the record as ready; a route never steps back from claimed
    lagging = msgspec.convert({"id": instance_id, "app": "echo", "state": "ready", "endpoint": "10.0.0.9:8000",
                               "created_at": 1.0}, Instance)
    table.on_change(None, lagging)
    assert instance_id in table


def test_an_instance_that_ended_elsewhere_is_remembered_for_its_app(table: RouteTable) -> None:
    retired = record("retiring", app="plain")  # claimed once, never routed by this gateway
    table.on_change(None, retired)
    assert table.ended_app(retired.id) == "plain"
    warm = record("retiring", claimed_at=None)  # never claimed: nobody has its link
    table.on_change(None, warm)
    assert table.ended_app(warm.id) is None
