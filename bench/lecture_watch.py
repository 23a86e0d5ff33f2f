"""What bench-lecture reads from the bus while a lecture runs: turns out of line, the longest line, records by state.

Imports only swarmpool and the standard library, so the same code runs inside the bench (on `up`) and inside a
function host of a deployed stack, where NATS is reachable (`python3 -c <this file> STACK`): there it prints a
JSON snapshot of the watch every half second until it is stopped or its stack goes away.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

from swarmpool.bus.messages import Ticket
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.state import InstanceStore

APP = "echo"
STATES = ("starting", "ready", "claimed", "retiring", "failed")


@dataclass
class Watch:
    """Counted from the queue and instance buckets' changes; `snapshot` adds the buckets' current contents."""

    violations: int = 0  # turns handed out while an earlier confirmed place still waited
    turns: int = 0
    peak_queue: int = 0
    records: dict[str, int] = field(default_factory=dict)  # the app's records by state (at the last snapshot)
    queued: int = 0  # students in line (at the last snapshot)

    def on_ticket(self, store: TicketStore, old: Ticket | None, new: Ticket | None) -> None:
        self.peak_queue = max(self.peak_queue, store.length(APP))
        if new is None or new.state != "turn" or (old is not None and old.state == "turn"):
            return
        self.turns += 1
        mine = store.get(new.app, new.id)
        if mine is None:
            return
        if any(p.ticket.confirmed and p.ticket.state == "waiting" and p.seq < mine.seq for p in store.queue(new.app)):
            self.violations += 1

    def snapshot(self, store: InstanceStore, tickets: TicketStore) -> "Watch":
        """Itself, with the records by state and the line's length read now."""
        self.records = {state: sum(r.state == state for r in store.all(APP)) for state in STATES}
        self.queued = tickets.length(APP)
        return self

    def follow(self, tickets: TicketStore) -> None:
        """Count turns and the line's length from now on, at every change of the queue bucket."""
        tickets.on_change(lambda old, new: self.on_ticket(tickets, old, new))

    @classmethod
    def parse(cls, line: str) -> "Watch":
        """A snapshot printed by `main`."""
        return cls(**json.loads(line))


async def _inside(stack: str, seconds: float) -> None:
    """In a function host of a deployed stack: snapshots on stdout, one JSON line every half second."""
    from swarmpool.bus.roles import Access
    from swarmpool.bus.subjects import Subjects
    from swarmpool.launcher import _connect

    s = Subjects(stack)
    access = Access.load("/run/secrets/functions.json")
    nc = await _connect(access.url, "functions", stack, access)
    store = await InstanceStore.open(nc, s, time.time, create=False)
    tickets = await TicketStore.open(nc, s, create=False)
    watch = Watch()
    watch.follow(tickets)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            print(json.dumps(asdict(watch.snapshot(store, tickets))), flush=True)
            await asyncio.sleep(0.5)
    finally:
        await tickets.close()
        await store.close()
        await nc.close()


if __name__ == "__main__":  # python3 -c "$(cat bench/lecture_watch.py)" STACK SECONDS, inside a function host
    asyncio.run(_inside(sys.argv[1], float(sys.argv[2])))
