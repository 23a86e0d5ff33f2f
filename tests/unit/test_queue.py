"""The queue's pure decisions: who gets a turn, which tickets lapse, the refill rate and what the page says."""

from __future__ import annotations

from swarmpool.bus.messages import Instance, Ticket
from swarmpool.bus.queue import Placed
from swarmpool.bus.spec import AppSpec
from swarmpool.functions.queue import CONFIRM_WAIT, lapsed, to_confirm, turns
from swarmpool.gateway import pages
from swarmpool.gateway.queue import RefillRate, place_text, refresh_seconds


def ticket(n: int, *, state: str = "waiting", instance: str = "", confirmed: bool = True, at: float = 0.0,
           browser: str = "") -> Placed:
    return Placed(Ticket(id=f"t{n}", app="demo", browser=browser or f"b{n}", at=at, seq=n, state=state,  # type: ignore[arg-type]
                         instance=instance, confirmed=confirmed), revision=100 + n)


def instance(name: str, state: str = "ready", browser: str = "") -> Instance:
    return Instance(id=name, app="demo", state=state, created_at=0.0, ready_at=1.0, browser=browser)  # type: ignore[arg-type]


def test_the_first_in_line_gets_the_oldest_free_instance_and_held_ones_are_not_given_twice() -> None:
    queue = [ticket(1, state="turn", instance="x"), ticket(2), ticket(3), ticket(4)]
    ready = [instance("x"), instance("y"), instance("z")]
    back, serve = turns(queue, ready, ready)
    assert back == []
    assert [(p.ticket.id, i.id) for p, i in serve] == [("t2", "y"), ("t3", "z")]


def test_a_turn_whose_instance_went_is_taken_back_but_not_one_being_served() -> None:
    queue = [ticket(1, state="turn", instance="gone"), ticket(2, state="turn", instance="mine", browser="b2")]
    records = [instance("mine", state="claimed", browser="b2")]
    back, serve = turns(queue, [], records)
    assert [p.ticket.id for p in back] == ["t1"] and serve == []


def test_a_ticket_whose_page_never_came_holds_no_place() -> None:
    queue = [ticket(1, confirmed=False), ticket(2)]
    _, serve = turns(queue, [instance("x")], [instance("x")])
    assert [(p.ticket.id, i.id) for p, i in serve] == [("t2", "x")]


def test_tickets_lapse_when_their_page_is_gone_for_the_window() -> None:
    window = 20.0
    held = ticket(1, at=0.0)
    left = ticket(2, at=0.0)
    never = ticket(3, confirmed=False, at=97.0)
    seen = {"demo.t1": 95.0, "demo.t2": 70.0}
    assert [p.ticket.id for p in lapsed([held, left, never], seen, None, 100.0, window)] == ["t2"]
    assert [p.ticket.id for p in lapsed([never], {}, None, 97.0 + CONFIRM_WAIT + 0.1, window)] == ["t3"]
    # a host that just took the queue over counts from when it began to listen
    assert lapsed([left], {}, 95.0, 100.0, window) == []
    assert [p.ticket.id for p in to_confirm([never, held], {"demo.t3": 98.0})] == ["t3"]


def test_the_refill_rate_and_the_estimate() -> None:
    now = [100.0]
    rate = RefillRate(lambda: now[0])
    assert rate.estimate("demo", 3) is None
    for t in (90.0, 95.0, 100.0):
        rate.on_change(instance("a", state="starting"), Instance(id=f"i{t}", app="demo", state="ready",
                                                                  created_at=0.0, ready_at=t))
    assert rate.per_second("demo") == 3 / 10
    assert rate.estimate("demo", 3) == 10.0
    rate.on_change(instance("b"), instance("b"))  # ready -> ready: no new instance
    assert rate.per_second("demo") == 3 / 10


def test_the_page_says_the_place_and_refreshes_without_script_within_the_window() -> None:
    assert place_text({"position": 1, "estimate": None}).startswith("You are next in line.")
    assert "about 40 seconds" in place_text({"position": 12, "estimate": 40})
    assert "about 3 minutes" in place_text({"position": 40, "estimate": 150})
    assert refresh_seconds(20.0) == 6
    page = pages.queue_page(AppSpec(name="demo", image="x", port=1), "You are number 2 in line.", 6)
    assert '<noscript><meta http-equiv="refresh" content="6"></noscript>' in page
    assert "/i/" not in page and "location.replace(location.pathname)" in page  # script goes to its own URL
