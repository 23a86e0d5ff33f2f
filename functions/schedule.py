"""Class schedules: which catalogue schedule entries are active at a moment. Pure arithmetic of
entries, a default time zone and `now` (UNIX seconds); no I/O, no clock of its own.

An entry is active from `warm_up` before its start to its end, on each listed weekday (the
weekday of the start, in the entry's time zone); an end before the start is on the next day.
A wall-clock time that the clock skips that day (spring forward) happens when the clock jumps
past it; one that it passes twice (fall back) starts an entry at its first passing and ends
one at its second, so a time change never shortens a class's warm pool.

A calendar source (a course's .ics) is active during each of its events (from `warm_up` before the
event's start), as its iCalendar library expands them: RRULE, RDATE, EXDATE and TZID/VTIMEZONE.
Occurrences are expanded only in a window around the moment asked about, never a whole recurrence.
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo

import icalendar
import recurring_ical_events

from swarmpool.bus.spec import CalendarSource, ScheduleEntry

log = logging.getLogger(__name__)

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
UTC = "UTC"


@lru_cache(maxsize=64)
def zone(name: str | None) -> ZoneInfo:
    return ZoneInfo(name or UTC)


def _wall(instant: float, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(instant, tz).replace(tzinfo=None, fold=0)


def _instant(day: date, hhmm: str, tz: ZoneInfo, repeated: str) -> float:
    """UNIX time of a wall-clock time on a day. A time the clock skips is the jump past it; one it
    passes twice is the first (`repeated="first"`, for starts) or the second passing ("last", ends)."""
    hour, minute = (int(p) for p in hhmm.split(":"))
    wall = datetime(day.year, day.month, day.day, hour, minute)
    first, second = sorted(wall.replace(tzinfo=tz, fold=fold).timestamp() for fold in (0, 1))
    if first == second:
        return first
    if _wall(first, tz) == wall:  # passed twice
        return first if repeated == "first" else second
    lo, hi = int(first), int(second)  # skipped: the jump is the first second whose wall time is past it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(mid, tz) >= wall:
            hi = mid
        else:
            lo = mid
    return float(hi)


def windows(entry: ScheduleEntry, default_tz: str | None, day: date) -> tuple[float, float] | None:
    """The entry's active window (warm-up included) that starts on local `day`, or None."""
    if WEEKDAYS[day.weekday()] not in entry.days:
        return None
    tz = zone(entry.timezone or default_tz)
    start = _instant(day, entry.start, tz, repeated="first")
    end_day = day + timedelta(days=1) if entry.end < entry.start else day  # "HH:MM" sorts as text
    end = _instant(end_day, entry.end, tz, repeated="last")
    return start - float(entry.warm_up), end


def is_active(entry: ScheduleEntry, default_tz: str | None, now: float) -> bool:
    """Whether the entry is active at `now` (from warm_up before its start to its end)."""
    tz = zone(entry.timezone or default_tz)
    today = datetime.fromtimestamp(now, timezone.utc).astimezone(tz).date()
    ahead = math.ceil(float(entry.warm_up) / 86400) + 1  # a warm-up may begin days before the start
    for offset in range(-1, ahead + 1):
        window = windows(entry, default_tz, today + timedelta(days=offset))
        if window is not None and window[0] <= now < window[1]:
            return True
    return False


def active(entries: list[ScheduleEntry], default_tz: str | None, now: float) -> list[ScheduleEntry]:
    """The entries active at `now`, in catalogue order."""
    return [e for e in entries if is_active(e, default_tz, now)]


# ---- lecture calendars (iCalendar) ----


class Lecture(NamedTuple):
    """One class: its label (a calendar event's SUMMARY, or an entry's "days start-end"), its start and end
    (UNIX seconds, warm-up not included) and the pool size it asks for."""

    label: str
    start: float
    end: float
    size: int


class CalendarError(ValueError):
    """An iCalendar text that cannot be used; the message says what is wrong with it."""


@lru_cache(maxsize=32)
def _query(ics: str) -> Any:
    """The parsed calendar, ready to expand occurrences (cached per text: every host parses it once)."""
    try:
        calendar = icalendar.Calendar.from_ical(ics)
    except Exception as err:  # the parser raises ValueError, KeyError, ... on malformed content lines
        raise CalendarError(f"not a valid iCalendar file: {err}") from None
    if not isinstance(calendar, icalendar.Calendar):
        raise CalendarError("not a valid iCalendar file: expected one BEGIN:VCALENDAR ... END:VCALENDAR")
    if not calendar.walk("VEVENT"):
        raise CalendarError("no events (VEVENT) in the calendar")
    try:
        return recurring_ical_events.of(calendar, skip_bad_series=False)
    except Exception as err:  # a malformed RRULE, RDATE or TZID of a series
        raise CalendarError(f"cannot expand its events: {type(err).__name__}: {err}") from None


def _moment(value: date | datetime, tz: ZoneInfo) -> float:
    """UNIX time of an event's DTSTART/DTEND: aware as given, floating and all-day in `tz`."""
    if not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.timestamp()


def _bounds(event: Any, tz: ZoneInfo) -> tuple[float, float]:
    start = event.get("DTSTART").dt
    try:
        end = event.end
    except Exception:  # no DTEND or DURATION: an all-day event lasts its day, a timed one has no length
        end = start + timedelta(days=1) if not isinstance(start, datetime) else start
    return _moment(start, tz), _moment(end, tz)


def occurrences(source: CalendarSource, default_tz: str | None, since: float, until: float) -> list[Lecture]:
    """The source's events (cancelled ones left out, `match` applied) that overlap [since, until), by start.
    Only that window is expanded. CalendarError when the calendar or one of its recurrences is malformed."""
    if source.ics is None:
        return []
    tz = zone(source.timezone or default_tz)
    query = _query(source.ics)
    wanted = (source.match or "").casefold()
    found = []
    try:
        events = query.between(datetime.fromtimestamp(since, tz), datetime.fromtimestamp(until, tz))
        for event in events:
            if str(event.get("STATUS", "")).upper() == "CANCELLED":
                continue
            label = str(event.get("SUMMARY", "")).strip() or (source.file or "calendar")
            if wanted and wanted not in label.casefold():
                continue
            start, end = _bounds(event, tz)
            if start < until and end > since:
                found.append(Lecture(label, start, end, source.size))
    except CalendarError:
        raise
    except Exception as err:  # a malformed RRULE, RDATE or TZID shows only when expanded
        raise CalendarError(f"cannot expand its events: {type(err).__name__}: {err}") from None
    return sorted(found, key=lambda lecture: (lecture.start, lecture.label))


_warned: set[str] = set()


def calendar_active(source: CalendarSource, default_tz: str | None, now: float) -> list[Lecture]:
    """The source's events active at `now`: from `warm_up` before their start to their end. A calendar
    that fails to expand here (it was checked around the time it was loaded) counts as none, logged once."""
    ahead = float(source.warm_up)
    try:
        found = occurrences(source, default_tz, now, now + ahead + 1)
    except CalendarError as err:
        if (key := f"{source.file}: {err}") not in _warned:
            _warned.add(key)
            log.warning("calendar %s ignored: %s", source.file or "(inline)", err)
        return []
    return [lecture for lecture in found if lecture.start - ahead <= now < lecture.end]


def check_calendar(source: CalendarSource, default_tz: str | None, now: float) -> None:
    """Parse the source's calendar and expand the weeks around `now`: CalendarError says what is wrong."""
    occurrences(source, default_tz, now - 7 * 86400, now + 28 * 86400)


def lectures(entries: list[ScheduleEntry], sources: list[CalendarSource], default_tz: str | None,
             since: float, until: float) -> list[Lecture]:
    """Every class of an app's schedule entries and calendars that overlaps [since, until), by start
    (warm-up not included): what a report names a lecture by its label."""
    found: list[Lecture] = []
    for entry in entries:
        tz = zone(entry.timezone or default_tz)
        day = datetime.fromtimestamp(since, tz).date() - timedelta(days=1)
        last = datetime.fromtimestamp(until, tz).date()
        while day <= last:
            window = windows(entry, default_tz, day)
            if window is not None:
                start = window[0] + float(entry.warm_up)
                if start < until and window[1] > since:
                    found.append(Lecture(entry.label, start, window[1], entry.size))
            day += timedelta(days=1)
    for source in sources:
        found += occurrences(source, default_tz, since, until)
    return sorted(found, key=lambda lecture: (lecture.start, lecture.label))
