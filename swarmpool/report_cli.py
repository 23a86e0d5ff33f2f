"""`swarmpool report`: read the event log, the catalogue and the lecture links from the bus, and print how a
lecture (or any window) went as a table, JSON or CSV (the figures: swarmpool/report.py)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from datetime import datetime, timezone
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js import api

from swarmpool.bus.links import Links
from swarmpool.bus.messages import CatalogueFile, InstanceEvent, Link, Visit
from swarmpool.bus.spec import Catalogue, parse_duration
from swarmpool.bus.state import CATALOGUE_KEY
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import CatalogueError, parse
from swarmpool.exits import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from swarmpool.operator import operator_connection
from swarmpool.report import (Lecture, Point, Report, as_csv, as_json, as_table, last_lecture, lecture, report,
                              timeline)

log = logging.getLogger(__name__)

IDLE = 2.0  # seconds without a message after which a reader checks whether it has caught up

_instance = msgspec.json.Decoder(InstanceEvent).decode
_visit = msgspec.json.Decoder(Visit).decode


def moment(text: str, now: float) -> float:
    """A duration ago ("2h") or an ISO 8601 time ("2026-12-01T10:00", UTC unless it names an offset)."""
    try:
        return now - float(parse_duration(text))
    except ValueError:
        pass
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (10m, 2h, 1d) nor a time (2026-12-01T10:00)") from None
    return (at if at.tzinfo else at.replace(tzinfo=timezone.utc)).timestamp()


async def read_log(js: Any, subjects: Subjects) -> list[InstanceEvent | Visit] | None:
    """Every instance event and visit kept in the event log up to now; None when there is no log."""
    try:
        last = (await js.stream_info(subjects.events_stream)).state.last_seq
    except nats.js.errors.NotFoundError:
        return None
    events: list[InstanceEvent | Visit] = []
    if last == 0:
        return events
    unreadable = 0
    sub = await js.subscribe(f"{subjects.prefix}.>", stream=subjects.events_stream, ordered_consumer=True,
                             config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL))
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=IDLE)
            except nats.errors.TimeoutError:
                if sub.pending_msgs == 0 and (await sub.consumer_info()).num_pending == 0:
                    break
                continue
            try:
                if msg.subject.startswith(f"{subjects.prefix}.visit."):
                    events.append(_visit(msg.data))
                elif msg.subject.startswith(f"{subjects.prefix}.instance."):
                    events.append(_instance(msg.data))
            except msgspec.DecodeError:  # another version's or a damaged record: said once, at the end
                unreadable += 1
            if msg.metadata.sequence.stream >= last or msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    if unreadable:
        log.warning("%d records of the event log %s could not be read: not counted", unreadable,
                    subjects.events_stream)
    return events


async def read_config(js: Any, subjects: Subjects) -> tuple[Catalogue, list[Link]]:
    """The catalogue every host follows (default settings if none was loaded) and the lecture links."""
    try:
        kv = await js.key_value(subjects.config_bucket)
    except nats.js.errors.BucketNotFoundError:
        return Catalogue(), []
    catalogue = Catalogue()
    try:
        entry = await kv.get(CATALOGUE_KEY)
        if entry.value:
            catalogue = parse(msgspec.json.decode(entry.value, type=CatalogueFile).text)
    except nats.js.errors.KeyNotFoundError:
        pass
    except (msgspec.DecodeError, CatalogueError) as err:
        print(f"swarmpool: the catalogue on the bus is not readable ({err}): default settings", file=sys.stderr)
    return catalogue, await Links(kv).all()


async def build(js: Any, subjects: Subjects, now: float, app: str | None, since: float | None,
                until: float | None, label: str | None) -> Report | str | None:
    """The report for the window asked for; a message for a lecture label that names nothing, None for no log."""
    events = await read_log(js, subjects)
    if events is None:
        return None
    catalogue, links = await read_config(js, subjects)
    apps: tuple[str, ...] | None = (app,) if app else None
    if label is not None:
        found: Lecture | None = lecture(catalogue, links, label, now)
        if found is None:
            return f"no schedule entry or lecture link labelled {label!r} has begun"
        start, end, apps = found.start, found.end, apps or found.apps
    else:
        start = since if since is not None else min((e.at for e in events), default=now)
        end = until if until is not None else now
    return report(events, start, end, now, apps=apps, cost_per_hour=catalogue.settings.cost_per_instance_hour,
                  lecture=label or "")


async def last_lecture_report(js: Any, subjects: Subjects, now: float,
                              points: int = 60) -> tuple[Report, list[Point]] | None:
    """The report and the timeline of the lecture that began last (the dashboard); None without one."""
    catalogue, links = await read_config(js, subjects)
    found = last_lecture(catalogue, links, now)
    if found is None:
        return None  # no lecture: the event log is not read
    events = await read_log(js, subjects)
    if events is None:
        return None
    rep = report(events, found.start, found.end, now, apps=found.apps,
                 cost_per_hour=catalogue.settings.cost_per_instance_hour, lecture=found.label)
    return rep, timeline(events, found.start, min(found.end, now), found.apps, points)


async def run_report(args: argparse.Namespace) -> int:
    subjects = Subjects(args.namespace)
    now = time.time()
    try:
        since = moment(args.since, now) if args.since else None
        until = moment(args.until, now) if args.until else None
    except ValueError as err:
        print(f"swarmpool: --since/--until: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.lecture is not None and (since is not None or until is not None):
        print("swarmpool: --lecture names its own window: give it without --since/--until", file=sys.stderr)
        return EXIT_BAD_INPUT
    nc = await operator_connection(args)
    if isinstance(nc, int):
        return nc
    try:
        rep = await build(nc.jetstream(), subjects, now, args.app, since, until, args.lecture)
    finally:
        await nc.close()
    if rep is None:
        print(f"swarmpool: no event log {subjects.events_stream} on this server (has `swarmpool up` or "
              f"`swarmpool functions` run for namespace {args.namespace}?)", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if isinstance(rep, str):
        print(f"swarmpool: --lecture: {rep}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(as_json(rep) if args.json else as_csv(rep).rstrip("\n") if args.csv else as_table(rep))
    return 0
