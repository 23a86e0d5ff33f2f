"""Refills wait for the student to settle: the real stack (functions host, gateway, echo instances)."""

from __future__ import annotations

import time

from swarmpool.bus.messages import Instance
from tests.stack import Stack, echo_catalogue, running_stack, wait_for

CAP = 3.0


def instance_id(location: str) -> str:
    return location.split("/")[2]


def replacement(s: Stack, claimed_at: float) -> Instance | None:
    """The first instance reserved after a claim (its refill)."""
    later = [r for r in s.store.all("echo") if r.created_at > claimed_at and r.state in ("starting", "ready")]
    return min(later, key=lambda r: r.created_at) if later else None


async def claim(s: Stack) -> Instance:
    location = (await s.launch()).headers["Location"]
    versioned = await wait_for(lambda: s.store.get("echo", instance_id(location)), timeout=5, what="the claim")
    assert versioned.instance.state == "claimed" and versioned.instance.claimed_at is not None
    return versioned.instance


async def test_a_claim_whose_page_never_loads_is_refilled_at_the_cap_and_a_loaded_page_at_once(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    catalogue = echo_catalogue(size=1, max_=4).replace("refill_delay = 0.2", f"refill_delay = 0.2\nsettle_cap = {CAP}")
    async with running_stack(nats_server.url, namespace, catalogue, docker=False) as s:
        await s.wait_ready(1)
        idle = await claim(s)  # nobody loads its page
        assert idle.claimed_at is not None
        refill = await wait_for(lambda: replacement(s, idle.claimed_at or 0), timeout=CAP + 10,
                                what="the refill of a claim whose page never loaded")
        assert refill.created_at - idle.claimed_at >= CAP - 0.3, "refilled before the student settled or the cap"
        await s.wait_ready(1)

        loaded = await claim(s)
        assert loaded.claimed_at is not None
        async with s.http.get(f"{s.url}/i/{loaded.id}/page") as page:  # the student's page load
            assert page.status == 200 and page.content_type == "text/html"
        refill = await wait_for(lambda: replacement(s, loaded.claimed_at or 0), timeout=CAP + 10,
                                what="the refill of a claim whose page loaded")
        assert refill.created_at - loaded.claimed_at < CAP / 2, "the settle signal did not refill at once"
        settled = s.store.get("echo", loaded.id)
        assert settled is not None and settled.instance.settled_at is not None
        assert time.time() - loaded.claimed_at < CAP + 10
