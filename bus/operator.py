"""What an operator's tool (the dashboard) needs of the bus: ask the admin service, follow events."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from nats.aio.client import Client as NATS

from swarmpool.bus.client import Bus
from swarmpool.bus.messages import AdminCommand, AdminEvent, AdminResult, ErrorReply, InstanceEvent
from swarmpool.bus.wire import subscribed
from swarmpool.bus.subjects import Subjects

_reply = msgspec.json.Decoder(AdminResult | ErrorReply)


async def ask_admin(bus: Bus, subjects: Subjects, verb: str, request: AdminCommand,
                    timeout: float = 15.0) -> AdminResult | ErrorReply:
    """One admin verb through the admin service (BusError when nobody answers)."""
    return _reply.decode(await bus.request(subjects.admin(verb), request, timeout))


async def follow_events(bus: Bus, subjects: Subjects,
                        listener: Callable[[InstanceEvent | AdminEvent], None]) -> Callable[[], Any]:
    """Call `listener` with each instance event and admin command as it happens; returns the unsubscribe."""
    nc: NATS = bus.client
    instance, audit = msgspec.json.Decoder(InstanceEvent), msgspec.json.Decoder(AdminEvent)
    subs = []
    for subject, decoder in ((subjects.instance_events_all(), instance), (subjects.audit_all(), audit)):
        async def handle(msg: Any, decoder: Any = decoder) -> None:
            try:
                listener(decoder.decode(msg.data))
            except msgspec.DecodeError:
                pass
        subs.append(await nc.subscribe(subject, cb=handle))
    await subscribed(nc)  # following from the moment we return

    async def stop() -> None:
        for sub in subs:
            await sub.unsubscribe()
    return stop
