"""How a lecture went, from the event log: a pure function of the events (instance transitions and the
gateways' visits), a window and `now`; the lecture windows of schedule entries and links; the output forms.

Reading the stream is swarmpool/report_cli.py; this module does no I/O and has no clock of its own.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

import msgspec

from swarmpool.bus.messages import EventKind, InstanceEvent, Link, Visit
from swarmpool.bus.spec import CalendarSource, Catalogue, ScheduleEntry
from swarmpool.functions.schedule import CalendarError, occurrences, windows, zone
from swarmpool.functions.schedule import Lecture as ClassTime

# session lengths are counted in these bins (upper bounds in seconds; the last is open)
LENGTH_BINS: tuple[tuple[str, float], ...] = (
    ("<5m", 300.0), ("5-15m", 900.0), ("15-30m", 1800.0), ("30-60m", 3600.0), ("1-2h", 7200.0),
    (">2h", math.inf))
# waiting clicks whose cause is a fault of the pool's machinery, not just a full pool: counted as failures
FAULTY_WAITS = frozenset({"unavailable", "error"})
INSTANCE_FAILED = "instance_failed"
LOOKBACK_DAYS = 14  # how far back `--lecture` looks for a schedule entry's last window


class Spread(msgspec.Struct, frozen=True, kw_only=True):
    """p50, p95 (nearest rank) and the maximum of some durations, in seconds."""

    p50: float
    p95: float
    max: float
    n: int


class AppReport(msgspec.Struct, frozen=True, kw_only=True):
    """What one app's students saw in a window."""

    app: str
    served: int = 0  # distinct browsers whose page loaded
    clicks: int = 0
    sessions: int = 0  # clicks that got a session
    pages: int = 0  # of those, sessions whose page loaded
    click_to_page: Spread | None = None
    waiting_visits: int = 0  # clicks answered with the waiting room
    longest_wait: float | None = None  # seconds, one browser's first waiting-room visit to its session
    session_length: Spread | None = None
    session_bins: dict[str, int] = {}
    peak_concurrency: int = 0  # sessions open at once
    peak_at: float | None = None
    failures: dict[str, int] = {}  # refused clicks, faulty waits and failed instances, by cause
    minutes_without_ready: float = 0.0
    instance_hours: float = 0.0
    cost: float | None = None  # instance_hours * settings.cost_per_instance_hour, when configured


class Report(msgspec.Struct, frozen=True, kw_only=True):
    start: float
    end: float
    lecture: str = ""  # the schedule entry's or link's label the window came from
    apps: dict[str, AppReport] = {}


def spread(values: list[float]) -> Spread | None:
    """Nearest-rank percentiles (an observed value, never interpolated); None for no values."""
    if not values:
        return None
    ordered = sorted(values)

    def rank(q: float) -> float:
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
    return Spread(p50=rank(0.50), p95=rank(0.95), max=ordered[-1], n=len(ordered))


@dataclass
class _Life:
    """One instance as its events tell it."""

    created: float | None = None
    removed: float | None = None
    claimed: float | None = None
    ended: float | None = None  # its session ended (retiring or removed after a claim)
    session: str = ""


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _ready_gaps(events: list[InstanceEvent], start: float, end: float) -> float:
    """Seconds of [start, end) during which none of these instances (of one app, in time order) was ready."""
    state: dict[str, str] = {}
    ready, level, t, total = 0, 0, start, 0.0  # instances ready now, and up to t; the moment counted up to
    for e in events:
        if e.at >= end:
            break
        before = state.get(e.id) == "ready"
        if e.event == EventKind.REMOVED:
            state.pop(e.id, None)
        else:
            state[e.id] = e.state
        ready += (state.get(e.id) == "ready") - before
        if e.at > start:
            if level == 0:
                total += e.at - t
            t = e.at
        level = ready
    if level == 0:
        total += max(0.0, end - t)
    return total


def _peak(intervals: list[tuple[float, float]], start: float, end: float) -> tuple[int, float | None]:
    """The most intervals open at once within [start, end), and when that first happened."""
    edges = sorted([(max(a, start), 1) for a, b in intervals if a < end and b > start]
                   + [(min(b, end), -1) for a, b in intervals if a < end and b > start],
                   key=lambda edge: (edge[0], edge[1]))  # an end before a start at the same moment
    open_, peak, at = 0, 0, None
    for moment, step in edges:
        open_ += step
        if open_ > peak:
            peak, at = open_, moment
    return peak, at


def _waits(clicks: list[Visit]) -> float | None:
    """The longest wait of one browser: from its first waiting-room visit to the click that ended it
    (served or refused), or to its last visit if none did; None without a waiting-room visit."""
    longest: float | None = None
    began: float | None = None
    last = 0.0
    for c in clicks:
        if c.outcome == "waiting":
            if began is None:
                began = c.at
            last = c.at
        elif began is not None:
            longest = max(longest or 0.0, c.at - began)
            began = None
    if began is not None:
        longest = max(longest or 0.0, last - began)
    return longest


def app_report(app: str, instance_events: list[InstanceEvent], visits: list[Visit], start: float, end: float,
               now: float, cost_per_hour: float | None = None) -> AppReport:
    """One app's figures for [start, end), from its events in time order (those before and after the
    window too: they tell the pool's state at its start and how its sessions ended)."""
    stop = min(end, now)
    lives: dict[str, _Life] = {}
    for e in instance_events:
        life = lives.setdefault(e.id, _Life())
        if e.event == EventKind.CREATED and life.created is None:
            life.created = e.at
        elif e.event == EventKind.CLAIMED and life.claimed is None:
            life.claimed = e.at
        elif e.event in (EventKind.RETIRING, EventKind.REMOVED) and life.claimed is not None and life.ended is None:
            life.ended = e.at
        if e.event == EventKind.REMOVED:
            life.removed = e.at
        if life.created is None:  # its creation is older than the log: it existed from its first event
            life.created = e.at
    instance_seconds = sum(_overlap(life.created or start, life.removed if life.removed is not None else stop,
                                    start, stop) for life in lives.values())
    sessions = [(life.claimed, life.ended if life.ended is not None else now) for life in lives.values()
                if life.claimed is not None]
    peak, peak_at = _peak(sessions, start, stop)
    lengths = [b - a for a, b in sessions if start <= a < end]
    bins = {name: 0 for name, _ in LENGTH_BINS}
    for length in lengths:
        bins[next(name for name, top in LENGTH_BINS if length < top)] += 1

    failures: dict[str, int] = {}
    for e in instance_events:
        if e.event == EventKind.FAILED and start <= e.at < end:
            failures[INSTANCE_FAILED] = failures.get(INSTANCE_FAILED, 0) + 1

    pages: dict[str, float] = {}
    for v in visits:
        if v.kind == "page" and v.session and v.session not in pages:
            pages[v.session] = v.at
    clicks = [v for v in visits if v.kind == "click" and start <= v.at < end]
    served = [c for c in clicks if c.outcome == "served"]
    loaded = [c for c in served if c.session in pages and pages[c.session] >= c.at]
    browsers = {c.browser or f"session {c.session}" for c in loaded}  # no browser cookie: a session is a student
    for c in clicks:
        cause = c.cause or "unknown"
        if c.outcome == "refused" or (c.outcome == "waiting" and cause in FAULTY_WAITS):
            failures[cause] = failures.get(cause, 0) + 1
    by_browser: dict[str, list[Visit]] = {}
    for c in clicks:
        if c.browser:
            by_browser.setdefault(c.browser, []).append(c)
    waits = [w for w in (_waits(cs) for cs in by_browser.values()) if w is not None]
    hours = instance_seconds / 3600
    return AppReport(
        app=app, served=len(browsers), clicks=len(clicks), sessions=len(served), pages=len(loaded),
        click_to_page=spread([pages[c.session] - c.at for c in loaded]),
        waiting_visits=sum(1 for c in clicks if c.outcome == "waiting"),
        longest_wait=max(waits) if waits else None,
        session_length=spread(lengths), session_bins=bins, peak_concurrency=peak, peak_at=peak_at,
        failures=dict(sorted(failures.items())),
        minutes_without_ready=round(_ready_gaps(instance_events, start, stop) / 60, 2),
        instance_hours=round(hours, 4),
        cost=round(hours * cost_per_hour, 2) if cost_per_hour is not None else None)


def report(events: Iterable[InstanceEvent | Visit], start: float, end: float, now: float,
           apps: Iterable[str] | None = None, cost_per_hour: float | None = None, lecture: str = "") -> Report:
    """Every app's figures for [start, end); `apps` limits them (default: those with events in the window)."""
    instance: dict[str, list[InstanceEvent]] = {}
    visits: dict[str, list[Visit]] = {}
    seen: set[str] = set()
    for e in sorted(events, key=lambda ev: ev.at):
        if isinstance(e, Visit):
            visits.setdefault(e.app, []).append(e)
        else:
            instance.setdefault(e.app, []).append(e)
        if start <= e.at < end:
            seen.add(e.app)
    names = sorted(set(apps) if apps is not None else seen)
    return Report(start=start, end=end, lecture=lecture, apps={
        name: app_report(name, instance.get(name, []), visits.get(name, []), start, end, now, cost_per_hour)
        for name in names})


class Point(msgspec.Struct, frozen=True, kw_only=True):
    """The pool at one moment of a window (the dashboard's plot)."""

    at: float
    sessions: int  # open sessions
    ready: int  # ready instances
    waiting: int  # waiting-room visits in this point's slice of the window


def timeline(events: Iterable[InstanceEvent | Visit], start: float, end: float, apps: Iterable[str] | None = None,
             points: int = 60) -> list[Point]:
    """`points` evenly spaced moments of [start, end): open sessions and ready instances at each slice's
    middle, waiting-room visits within it (the apps named, or all)."""
    wanted = set(apps) if apps is not None else None
    ordered = sorted((e for e in events if wanted is None or e.app in wanted), key=lambda e: e.at)
    width = (end - start) / points if end > start else 0.0
    state: dict[tuple[str, str], str] = {}
    waiting = [0] * points
    out: list[Point] = []
    i = 0
    for k in range(points if width > 0 else 0):
        middle = start + (k + 0.5) * width
        while i < len(ordered) and ordered[i].at <= middle:
            e = ordered[i]
            if isinstance(e, InstanceEvent):
                if e.event == EventKind.REMOVED:
                    state.pop((e.app, e.id), None)
                else:
                    state[(e.app, e.id)] = e.state
            i += 1
        out.append(Point(at=middle, sessions=sum(1 for v in state.values() if v == "claimed"),
                         ready=sum(1 for v in state.values() if v == "ready"), waiting=0))
    for e in ordered:
        if isinstance(e, Visit) and e.kind == "click" and e.outcome == "waiting" and start <= e.at < end and width:
            waiting[min(points - 1, int((e.at - start) / width))] += 1
    return [msgspec.structs.replace(p, waiting=w) for p, w in zip(out, waiting)]


# ---- lecture windows ----


@dataclass(frozen=True)
class Lecture:
    """A window to report on and where it came from."""

    label: str
    start: float
    end: float
    apps: tuple[str, ...]  # the apps it concerns


def schedule_lectures(catalogue: Catalogue, label: str, now: float) -> list[Lecture]:
    """The last window (class time, without warm-up) of each schedule entry named `label` that has begun."""
    found = []
    for spec in catalogue.apps.values():
        for entry in spec.schedule:
            if entry.label != label:
                continue
            today = datetime.fromtimestamp(now, timezone.utc).astimezone(
                zone(entry.timezone or catalogue.settings.timezone)).date()
            best = _last_window(entry, catalogue.settings.timezone, today, now)
            if best is not None:
                found.append(Lecture(label, best[0], best[1], (spec.name,)))
        for event in _calendar_classes(spec.calendar, catalogue.settings.timezone, now):
            if event.label == label:
                found.append(Lecture(label, event.start, event.end, (spec.name,)))
    return found


def _calendar_classes(sources: list[CalendarSource], default_tz: str | None, now: float) -> list[ClassTime]:
    """The lecture calendars' events of the last LOOKBACK_DAYS that have begun by `now` (a broken calendar: none)."""
    found = []
    for source in sources:
        try:
            found += [c for c in occurrences(source, default_tz, now - LOOKBACK_DAYS * 86400, now) if c.start <= now]
        except CalendarError:
            continue
    return found


def _last_window(entry: ScheduleEntry, default_tz: str | None, today: date,
                 now: float) -> tuple[float, float] | None:
    """The class time (start to end) of the entry's latest window that has begun by `now`."""
    for back in range(-1, LOOKBACK_DAYS + 1):
        window = windows(entry, default_tz, today - timedelta(days=back))
        if window is not None:
            begins = window[0] + float(entry.warm_up)
            if begins <= now:
                return begins, window[1]
    return None


def link_lectures(links: Iterable[Link], label: str) -> list[Lecture]:
    """The windows of the links labelled `label`: from when each was made to when it expires."""
    return [Lecture(label, link.created_at, link.expires, (link.app,)) for link in links if link.label == label]


def lecture(catalogue: Catalogue, links: list[Link], label: str, now: float) -> Lecture | None:
    """The most recent window, schedule entry's or link's, labelled `label` (None: no such label has begun)."""
    found = schedule_lectures(catalogue, label, now) + [c for c in link_lectures(links, label) if c.start <= now]
    if not found:
        return None
    last = max(found, key=lambda c: c.start)
    apps = tuple(sorted({a for c in found if c.start == last.start for a in c.apps}))
    return Lecture(label, last.start, last.end, apps)


def last_lecture(catalogue: Catalogue, links: list[Link], now: float) -> Lecture | None:
    """The lecture that began last (a schedule entry's window or a labelled link's), for the dashboard."""
    labels = {e.label for spec in catalogue.apps.values() for e in spec.schedule} | {k.label for k in links if k.label}
    labels |= {c.label for spec in catalogue.apps.values()
               for c in _calendar_classes(spec.calendar, catalogue.settings.timezone, now)}
    found = [c for c in (lecture(catalogue, links, label, now) for label in sorted(labels)) if c is not None]
    return max(found, key=lambda c: c.start) if found else None


# ---- output ----

CSV_FIELDS = ("app", "served", "clicks", "sessions", "pages", "click_to_page_p50", "click_to_page_p95",
              "click_to_page_max", "waiting_visits", "longest_wait", "session_p50", "session_p95", "session_max",
              "peak_concurrency", "failures", "minutes_without_ready", "instance_hours", "cost")


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    return f"{value / 60:.1f}m" if value < 7200 else f"{value / 3600:.1f}h"


def _iso(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(at, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def flat(r: AppReport) -> dict[str, object]:
    """One app's report as a CSV row (seconds as numbers, failures as `cause=count;...`)."""
    c, s = r.click_to_page, r.session_length
    return {"app": r.app, "served": r.served, "clicks": r.clicks, "sessions": r.sessions, "pages": r.pages,
            "click_to_page_p50": c.p50 if c else "", "click_to_page_p95": c.p95 if c else "",
            "click_to_page_max": c.max if c else "", "waiting_visits": r.waiting_visits,
            "longest_wait": "" if r.longest_wait is None else r.longest_wait,
            "session_p50": s.p50 if s else "", "session_p95": s.p95 if s else "", "session_max": s.max if s else "",
            "peak_concurrency": r.peak_concurrency,
            "failures": ";".join(f"{k}={v}" for k, v in r.failures.items()),
            "minutes_without_ready": r.minutes_without_ready, "instance_hours": r.instance_hours,
            "cost": "" if r.cost is None else r.cost}


def as_csv(rep: Report) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for r in rep.apps.values():
        writer.writerow(flat(r))
    return out.getvalue()


def as_json(rep: Report) -> str:
    return msgspec.json.encode(rep).decode()


def as_table(rep: Report) -> str:
    """The report for people: one block per app."""
    head = f"{rep.lecture + ': ' if rep.lecture else ''}{_iso(rep.start)} to {_iso(rep.end)}"
    lines = [head]
    if not rep.apps:
        lines.append("  no events in this window")
    for r in rep.apps.values():
        c, s = r.click_to_page, r.session_length
        lines += [
            "",
            f"{r.app}",
            f"  students served      {r.served}  ({r.sessions} sessions from {r.clicks} clicks; {r.pages} pages loaded)",
            f"  click to page        p50 {_seconds(c.p50 if c else None)}  p95 {_seconds(c.p95 if c else None)}"
            f"  max {_seconds(c.max if c else None)}",
            f"  waiting room         {r.waiting_visits} visits, longest wait {_seconds(r.longest_wait)}",
            f"  session length       p50 {_seconds(s.p50 if s else None)}  p95 {_seconds(s.p95 if s else None)}"
            f"  max {_seconds(s.max if s else None)}   "
            + "  ".join(f"{k} {v}" for k, v in r.session_bins.items()),
            f"  peak concurrency     {r.peak_concurrency}" + (f" at {_iso(r.peak_at)}" if r.peak_at else ""),
            f"  failures             " + (", ".join(f"{k} {v}" for k, v in r.failures.items()) or "none"),
            f"  no ready instance    {r.minutes_without_ready:g} min",
            f"  instance-hours       {r.instance_hours:g}" + (f"  (cost {r.cost:.2f})" if r.cost is not None else ""),
        ]
    return "\n".join(lines)
