"""`swarmpool events`: read the event log (instance transitions, operator commands, gateways' visits) from its stream,
as a table, JSON lines or CSV; all that is kept (or since a moment), then new ones with --follow."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from datetime import datetime, timezone

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from swarmpool.bus.messages import AdminEvent, InstanceEvent, Visit
from swarmpool.bus.spec import parse_duration
from swarmpool.bus.subjects import Subjects
from swarmpool.exits import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from swarmpool.operator import operator_connection
from swarmpool.ids import short_id

FIELDS = ("time", "app", "event", "instance", "state", "reason", "by")
IDLE = 2.0  # seconds without a message after which a reader that is caught up checks again

_instance = msgspec.json.Decoder(InstanceEvent).decode
_admin = msgspec.json.Decoder(AdminEvent).decode
_visit = msgspec.json.Decoder(Visit).decode


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def row(subjects: Subjects, subject: str, data: bytes) -> dict[str, str] | None:
    """One stored event as a flat row (instance ids cut to their log-safe prefix); None if unreadable."""
    try:
        if subject.startswith(f"{subjects.prefix}.audit."):
            a = _admin(data)
            by = f"{a.by.user or '?'}@{a.by.host or '?'}"
            return {"time": _iso(a.at), "app": a.app or "*", "event": f"admin {a.verb}", "instance": "",
                    "state": "", "reason": a.reason, "by": by}
        if subject.startswith(f"{subjects.prefix}.visit."):  # a gateway's click or page load (hashed keys only)
            v = _visit(data)
            what = " ".join(p for p in (v.kind, v.outcome) if p)
            why = " ".join(p for p in (v.cause, f"link {v.link}" if v.link else "") if p)
            return {"time": _iso(v.at), "app": v.app, "event": what, "instance": "", "state": "", "reason": why,
                    "by": v.gateway}
        e = _instance(data)
        return {"time": _iso(e.at), "app": e.app, "event": e.event, "instance": short_id(e.app, e.id),
                "state": e.state, "reason": e.reason, "by": ""}
    except msgspec.DecodeError:
        return None


class Printer:
    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.csv = csv.DictWriter(sys.stdout, fieldnames=FIELDS) if mode == "csv" else None
        if self.csv is not None:
            self.csv.writeheader()

    def print(self, r: dict[str, str]) -> None:
        if self.mode == "json":
            print(json.dumps(r), flush=True)
        elif self.csv is not None:
            self.csv.writerow(r)
            sys.stdout.flush()
        else:
            who = f"  by {r['by']}" if r["by"] else ""
            print(f"{r['time']}  {r['app']:<12} {r['event']:<14} {r['instance']:<12} {r['reason']}{who}".rstrip(),
                  flush=True)


async def read_events(args: argparse.Namespace) -> int:
    subjects = Subjects(args.namespace)
    try:
        since = parse_duration(args.since) if args.since else None
    except ValueError as err:
        print(f"swarmpool: --since: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    nc = await operator_connection(args)
    if isinstance(nc, int):
        return nc
    try:
        js = nc.jetstream()
        try:
            last = (await js.stream_info(subjects.events_stream)).state.last_seq  # "all that is kept" ends here
        except nats.js.errors.NotFoundError:
            print(f"swarmpool: no event log {subjects.events_stream} on this server (has `swarmpool up` or "
                  f"`swarmpool functions` run for namespace {args.namespace}?)", file=sys.stderr)
            return EXIT_UNAVAILABLE
        if since is not None:
            start = datetime.now(timezone.utc).timestamp() - since
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_TIME,
                                        opt_start_time=datetime.fromtimestamp(start, timezone.utc))
        else:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL)
        sub = await js.subscribe(f"{subjects.prefix}.>", stream=subjects.events_stream, ordered_consumer=True,
                                 config=config)
        printer = Printer("json" if args.json else "csv" if args.csv else "table")
        done = last == 0
        while args.follow or not done:
            try:
                msg = await sub.next_msg(timeout=IDLE)
            except nats.errors.TimeoutError:  # nothing (more) since --since, or a quiet log
                done = done or (sub.pending_msgs == 0 and (await sub.consumer_info()).num_pending == 0)
                continue
            r = row(subjects, msg.subject, msg.data)
            if r is not None and (args.app is None or r["app"] == args.app):
                printer.print(r)
            done = done or msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0
        return 0
    finally:
        await nc.close()

