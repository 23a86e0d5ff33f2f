"""Class schedules: which catalogue schedule entries are active at a moment. Pure arithmetic of
entries, a default time zone and `now` (UNIX seconds); no I/O, no clock of its own.

An entry is active from `warm_up` before its start to its end, on each listed weekday (the
weekday of the start, in the entry's time zone); an end before the start is on the next day.
A wall-clock time that the clock skips that day (spring forward) happens when the clock jumps
past it; one that it passes twice (fall back) starts an entry at its first passing and ends
one at its second, so a time change never shortens a class's warm pool.
"""

from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone
from functools import lru_cache
from zoneinfo import ZoneInfo

from swarmpool.bus.spec import ScheduleEntry

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
