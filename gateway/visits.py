"""The gateway's record of students' clicks and page loads in the event log (what `swarmpool report` reads).

A record is one small publish, sent from a background task so a click's answer never waits for it;
a record that cannot be sent is logged and dropped (the report then counts one click fewer).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable

from swarmpool.bus.client import Publish
from swarmpool.bus.messages import Visit
from swarmpool.bus.subjects import Subjects

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # records waiting to be sent; beyond this (NATS away for long) new ones are dropped
_SESSION_CONTEXT = b"swarmpool report session\x00"
_BROWSER_CONTEXT = b"swarmpool report browser\x00"


def session_key(instance_id: str) -> str:
    """How the event log names a session: a one-way hash of its instance id (the id is a capability)."""
    return hashlib.sha256(_SESSION_CONTEXT + instance_id.encode()).hexdigest()[:16]


def browser_tag(browser: str) -> str:
    """How the event log names a browser: a hash of its bus key (never the cookie); "" stays ""."""
    return hashlib.sha256(_BROWSER_CONTEXT + browser.encode()).hexdigest()[:16] if browser else ""


class VisitLog:
    """Queues Visit records and publishes them in order from `run()`."""

    def __init__(self, publish: Publish, subjects: Subjects, gateway: str,
                 clock: Callable[[], float] = time.time) -> None:
        self._send = publish
        self._subjects = subjects
        self._gateway = gateway
        self._clock = clock
        self._queue: asyncio.Queue[Visit] = asyncio.Queue(MAX_PENDING)

    def click(self, app: str, outcome: str, *, cause: str = "", instance_id: str = "", browser: str = "",
              link: str = "") -> None:
        """A click on /launch/<app> and its outcome (served, waiting, refused)."""
        self._put(Visit(kind="click", app=app, at=self._clock(), outcome=outcome, cause=cause,
                        session=session_key(instance_id) if instance_id else "", browser=browser_tag(browser),
                        link=link, gateway=self._gateway))

    def page(self, app: str, instance_id: str) -> None:
        """A claimed session's page has loaded (the settle signal)."""
        self._put(Visit(kind="page", app=app, at=self._clock(), session=session_key(instance_id),
                        gateway=self._gateway))

    def _put(self, visit: Visit) -> None:
        try:
            self._queue.put_nowait(visit)
        except asyncio.QueueFull:
            log.warning("visit record of %s dropped: %d records not yet sent", visit.app, MAX_PENDING)

    async def flush(self) -> None:
        """Send every queued record (at shutdown)."""
        while not self._queue.empty():
            await self._publish(self._queue.get_nowait())

    async def run(self) -> None:
        """Send records as they come, until cancelled."""
        while True:
            await self._publish(await self._queue.get())

    async def _publish(self, visit: Visit) -> None:
        try:
            await self._send(self._subjects.visit(visit.app, visit.kind), visit)
        except Exception as err:  # NATS down: the report misses this one
            log.warning("visit record of %s not published: %s", visit.app, err)
