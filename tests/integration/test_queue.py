"""The fair queue on a real nats-server: clicks that find no ready instance wait in line per app and are served
first come, first served, at any gateway, by any functions host.

The instances are local (tests/local_swarm.py: Docker is not the subject here); the test holds their starts while
its students queue, then lets them through as an engine starting `max_parallel_starts` at a time would."""

from __future__ import annotations

import asyncio
import re
import time
from contextlib import AsyncExitStack


from bench.students import Attendance, attend, click, new_browser, wait_turn
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.subjects import Subjects
from swarmpool.launcher import serve_gateway
from swarmpool.natsd import free_port
from tests.local_swarm import LocalSwarm
from tests.stack import Stack, echo_catalogue, running_stack, wait_for

WINDOW = 'queue_window = "3s"\nper_browser_limit = 1'


def _catalogue(size: int, max_: int, queue_max: int | None = None) -> str:
    # the students here load no HTML page: their refills start at the settle cap, shortened (not what is tested)
    text = echo_catalogue(size=size, max_=max_, parallel=size, settle_cap=1).replace("max_instances = 120",
                                                                       f"max_instances = 120\n{WINDOW}")
    if queue_max is not None:
        text = text.replace(f"max_parallel_starts = {size}", f"max_parallel_starts = {size}\nqueue_max = {queue_max}")
    return text


async def _take_the_pool(s: Stack, stack: AsyncExitStack, size: int = 1) -> None:
    """First students take every ready instance; the refills wait for the test's `s.swarm.release`."""
    await s.wait_ready(size)
    assert isinstance(s.swarm, LocalSwarm)
    s.swarm.hold()
    for i in range(size):
        http = await stack.enter_async_context(new_browser())
        first = await attend(http, s.url, "echo", Attendance(f"first{i}"))
        assert first.outcome == "served" and not first.ticket


async def _tickets(s: Stack, stack: AsyncExitStack) -> TicketStore:
    store = await TicketStore.open(s.nc, Subjects(s.namespace), create=False)
    stack.push_async_callback(store.close)
    return store


async def test_the_queue_serves_in_arrival_order_across_two_gateways_and_two_hosts(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    n, size = 6, 3  # two rounds of refills, three at a time
    async with running_stack(nats_server.url, namespace, _catalogue(size=size, max_=n + size), hosts=2,
                             docker=False) as s, \
            AsyncExitStack() as stack:
        port = free_port()
        await stack.enter_async_context(serve_gateway(s.nc, s.catalogue, namespace, "127.0.0.1", port))
        gateways = [s.url, f"http://127.0.0.1:{port}"]
        await _take_the_pool(s, stack, size)
        tickets = await _tickets(s, stack)
        turns: list[str] = []  # tickets in the order their turn came, as the bucket recorded it
        tickets.on_change(lambda old, new: turns.append(new.id) if new is not None and new.state == "turn"
                          and (old is None or old.state != "turn") else None)
        students = [Attendance(f"student{i}") for i in range(n)]
        browsers = [await stack.enter_async_context(new_browser()) for _ in range(n)]

        async def wait_then_serve(i: int, base: str) -> Attendance:
            me = students[i]
            assert await wait_turn(browsers[i], base, me.ticket, me)
            async with browsers[i].get(base + me.ticket, allow_redirects=False) as turn:
                assert turn.status == 303
                location = turn.headers["Location"]
                assert location.startswith("/i/")
            async with browsers[i].get(base + location) as page:
                assert page.status == 200
            me.served_at = time.monotonic()
            return me

        # they click one after the other, on alternate gateways, while no instance is ready; each waits at the
        # other gateway than the one it clicked at (a ticket is good at any gateway)
        waiting = []
        for i, me in enumerate(students):
            location = await click(browsers[i], gateways[i % 2], "echo", me)
            assert location is not None and "/ticket/" in location, f"{me.name} was not queued: {me.outcome}"
            me.ticket = location
            base = gateways[(i + 1) % 2]
            async with browsers[i].get(base + me.ticket, allow_redirects=False) as page:
                assert page.status == 200
                text = await page.text()
                assert (f"number {i + 1} in line" if i else "next in line") in text
            await wait_for(lambda: tickets.length("echo") == i + 1, timeout=10, what=f"{me.name}'s place")
            waiting.append(asyncio.create_task(wait_then_serve(i, base)))
        order = [p.ticket.id for p in tickets.queue("echo")]
        assert order == [me.ticket.rsplit("/", 1)[-1] for me in students]  # the bucket's sequence: arrival order

        by_ticket = {me.ticket.rsplit("/", 1)[-1]: me for me in students}
        for i in range(size, n + 1, size):  # the engine starts a round (max_parallel_starts) while the line waits
            await s.swarm.release(size)  # type: ignore[union-attr]
            await wait_for(lambda: len(turns) >= i and all(by_ticket[t].turn_at for t in turns[:i]), timeout=60,
                           what=f"{i} turns, seen by their pages")
        served = await asyncio.gather(*waiting)
        assert turns == order, "turns came out of arrival order"
        # a later round is served after an earlier one, whatever the clients' timing within a round
        rounds = [served[i:i + size] for i in range(0, n, size)]
        for before, after in zip(rounds, rounds[1:]):
            assert max(me.turn_at or 0.0 for me in before) <= min(me.turn_at or 0.0 for me in after)
        assert all(me.positions and me.positions[0] == i + 1 for i, me in enumerate(students))
        assert tickets.length("echo") == 0


async def test_a_student_who_leaves_the_waiting_page_leaves_the_queue(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, _catalogue(size=1, max_=4), docker=False) as s, AsyncExitStack() as stack:
        await _take_the_pool(s, stack)
        tickets = await _tickets(s, stack)
        leaver, stayer = Attendance("leaver"), Attendance("stayer")
        leaving, staying = [await stack.enter_async_context(new_browser()) for _ in range(2)]
        leaver.ticket = await click(leaving, s.url, "echo", leaver) or ""
        stayer.ticket = await click(staying, s.url, "echo", stayer) or ""
        assert "/ticket/" in leaver.ticket and "/ticket/" in stayer.ticket
        # a copied ticket URL serves nobody else: another browser is told the place is not held
        other = await stack.enter_async_context(new_browser())
        async with other.get(s.url + leaver.ticket, allow_redirects=False) as r:
            assert r.status == 404
        # the leaver's page holds its connection until its turn comes, then the tab is closed: never comes
        await s.swarm.release(1)  # type: ignore[union-attr]  # one start: the instance the leaver's turn holds
        assert await wait_turn(leaving, s.url, leaver.ticket, leaver)
        held = tickets.get("echo", leaver.ticket.rsplit("/", 1)[-1])
        assert held is not None and held.ticket.state == "turn"
        held_instance = held.ticket.instance
        # a script's fetch() of the ticket URL on its turn takes nothing and learns nothing: only navigations
        fetch = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty", "Sec-Fetch-Site": "same-origin"}
        async with leaving.get(s.url + leaver.ticket, allow_redirects=False, headers=fetch) as r:
            assert r.status == 403 and "Location" not in r.headers and held_instance not in await r.text()
        record = s.store.get("echo", held_instance)
        assert record is not None and record.instance.state == "ready"
        # the stayer is served by the instance the leaver's turn held, once the window passes without the leaver
        stay = asyncio.create_task(attend(staying, s.url, "echo", stayer))
        served = await asyncio.wait_for(stay, timeout=60)
        assert served.outcome == "served", served
        assert served.instance == held_instance, "the instance held for the lapsed ticket was not passed on"
        assert leaver.ticket.rsplit("/", 1)[-1] not in {p.ticket.id for p in tickets.queue("echo")}
        async with leaving.get(s.url + leaver.ticket, allow_redirects=False) as gone:  # the leaver comes back
            assert gone.status == 404
            assert "not held any more" in await gone.text()


async def test_a_full_queue_shows_the_class_is_full_page_and_a_page_without_script_keeps_its_place(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, _catalogue(size=1, max_=1, queue_max=1),
                             docker=False) as s, \
            AsyncExitStack() as stack:
        await _take_the_pool(s, stack)  # max 1: nothing refills
        tickets = await _tickets(s, stack)
        waiting, late = Attendance("waiting"), Attendance("late")
        first, second = [await stack.enter_async_context(new_browser()) for _ in range(2)]
        waiting.ticket = await click(first, s.url, "echo", waiting) or ""
        assert "/ticket/" in waiting.ticket
        refreshes: list[int] = []

        async def without_script() -> None:  # a browser without script: its page's refresh, nothing else
            while True:
                async with first.get(s.url + waiting.ticket, allow_redirects=False) as page:
                    assert page.status == 200
                    every = re.search(r'<noscript><meta http-equiv="refresh" content="(\d+)">', await page.text())
                assert every is not None
                refreshes.append(int(every.group(1)))
                await asyncio.sleep(refreshes[-1])  # as the browser waits out its meta refresh

        holding = asyncio.create_task(without_script())
        stack.callback(holding.cancel)
        # longer than the queue window (3 s) on refreshes alone: the place is kept
        await wait_for(lambda: sum(refreshes) > 4, timeout=30, what="refreshes past the queue window")
        assert tickets.get("echo", waiting.ticket.rsplit("/", 1)[-1]) is not None
        assert await click(second, s.url, "echo", late) is None
        async with second.get(f"{s.url}/launch/echo", allow_redirects=False) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) > 0
            assert "This class is full" in await r.text()

        async def queued() -> int:
            async with second.get(f"{s.url}/status") as r:
                return int((await r.json())["apps"]["echo"]["queued"])
        await wait_for(lambda: queued(), timeout=10, what="the waiting student in /status")  # its page seen
        assert await queued() == 1
        async with second.get(f"{s.url}/metrics") as r:
            assert 'swarmpool_queue_waiting{app="echo"} 1.0' in await r.text()


async def test_a_gateway_that_starts_before_the_queue_bucket_waits_for_it(nc, namespace, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A deployed stack starts its gateway and function hosts together: the records' bucket can exist before the
    queue bucket, and a gateway that gave up at once served the whole lecture without a queue (every click past the
    pool: 503)."""
    import swarmpool.launcher as launcher

    s = Subjects(namespace)
    looked: list[str] = []

    class Watched(TicketStore):
        @classmethod
        async def open(cls, nc, subjects, create=True):  # type: ignore[no-untyped-def, override]
            looked.append(subjects.prefix)
            return await TicketStore.open(nc, subjects, create=create)

    monkeypatch.setattr(launcher, "TicketStore", Watched)
    opening = asyncio.create_task(launcher._open_queue(nc, s, wait=20))
    await wait_for(lambda: looked and not opening.done(), timeout=10, what="the gateway looked for the queue bucket")
    made = await TicketStore.open(nc, s)  # the functions host makes it after the gateway looked
    opened = await asyncio.wait_for(opening, 20)
    assert opened is not None, "the gateway gave up on the queue bucket made after it looked"
    await opened.close()
    await made.close()
    started = time.monotonic()
    assert await launcher._open_queue(nc, Subjects(namespace + "x"), wait=1) is None  # an older functions host
    assert time.monotonic() - started < 10
