"""After a reload: which warm instances are outdated, and how many go per top-up (pure decisions)."""

from __future__ import annotations

import msgspec

from swarmpool.bus.messages import Instance
from swarmpool.functions.policy import outdated, plan_recycle, retire_reason

NOW = 1_000_000.0


def rec(n: int, state: str, spec: str = "new", image: str = "sha256:b", handle: str = "h") -> Instance:
    return msgspec.convert(dict(id=f"id{n}", handle=handle, app="a", state=state, created_at=NOW - 100 + n, spec=spec,
                                image=image, ready_at=NOW - 50 + n if state == "ready" else None,
                                claimed_at=NOW - 10 if state == "claimed" else None), Instance)


def test_outdated_by_spec_or_image_behind_the_same_name() -> None:
    assert not outdated(rec(1, "ready"), "new", "sha256:b")
    assert outdated(rec(1, "ready", spec="old"), "new", "sha256:b")
    assert outdated(rec(1, "ready", image="sha256:a"), "new", "sha256:b")
    assert not outdated(rec(1, "ready", spec=""), "new", "")  # records from before versions, image unknown
    assert outdated(rec(1, "ready", handle=""), "new", "sha256:b")  # a service named after its id (older version)


def test_ready_ones_go_only_as_current_ones_keep_the_target() -> None:
    old = [rec(i, "ready", spec="old") for i in range(3)]
    stale, now = plan_recycle(old, "new", "", target=3)
    assert len(stale) == 3 and now == []  # nothing current yet: the pool stays whole
    stale, now = plan_recycle(old + [rec(9, "ready")], "new", "", target=3)
    assert [r.id for r in now] == ["id0"]  # one current ready: one old goes, oldest first
    stale, now = plan_recycle(old + [rec(8, "ready"), rec(9, "ready"), rec(10, "ready")], "new", "", target=3)
    assert len(now) == 2  # at most a batch per top-up


def test_claimed_never_and_starting_at_once() -> None:
    records = [rec(1, "claimed", spec="old"), rec(2, "starting", spec="old")]
    stale, now = plan_recycle(records, "new", "", target=1)
    assert [r.id for r in stale] == ["id2"] and [r.id for r in now] == ["id2"]


def test_a_removed_apps_sessions_end_by_the_default_rules() -> None:
    assert retire_reason(rec(1, "ready"), None, NOW) == "app no longer in the catalogue"
    assert retire_reason(rec(1, "claimed"), None, NOW) is None  # claimed 10 s ago: its session goes on
    assert retire_reason(rec(1, "claimed"), None, NOW + 5 * 3600).startswith("max lifetime")


def test_ready_instances_named_after_their_id_go_at_once_and_claimed_ones_stay() -> None:
    """An older version's service names carry the id (the session's capability): never handed out, retired
    at once however few current ones there are; a session already on one runs to its end."""
    records = [rec(i, "ready", handle="") for i in range(4)] + [rec(7, "claimed", handle="")]
    stale, now = plan_recycle(records, "new", "", target=4)
    assert sorted(r.id for r in now) == ["id0", "id1", "id2", "id3"]
    assert "id7" not in {r.id for r in stale}
