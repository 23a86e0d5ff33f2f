"""Class schedules: pure arithmetic with an injected clock (weekdays, midnight, warm-up, DST, zones),
the target rule that uses them, and catalogue validation of schedule entries."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from swarmpool.bus.messages import PoolOverride
from swarmpool.bus.spec import AppSpec, Pool, Probe, ScheduleEntry
from swarmpool.catalogue import CatalogueError, parse
from swarmpool.functions.policy import plan_top_up, target
from swarmpool.functions.schedule import active, is_active

BERLIN = "Europe/Berlin"


def local(text: str, tz: str = BERLIN, fold: int = 0) -> float:
    """UNIX time of a local wall-clock time ("2024-03-05 10:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(tz), fold=fold).timestamp()


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def entry(days: str, start: str, end: str, size: int = 10, warm_up: float = 0.0,
          tz: str | None = BERLIN) -> ScheduleEntry:
    return ScheduleEntry(days=days.split(","), start=start, end=end, size=size, warm_up=warm_up,  # type: ignore[arg-type]
                         timezone=tz)  # type: ignore[arg-type]


LECTURE = entry("tue,thu", "10:00", "11:30", warm_up=15 * 60)
NIGHT = entry("fri", "22:00", "02:00")  # crosses midnight
EARLY = entry("mon", "00:30", "01:00", warm_up=3600)  # warm-up starts the day before
SPRING = entry("sun", "02:30", "04:00")  # 2024-03-31: 02:00 -> 03:00, 02:30 does not exist
FALL_START = entry("sun", "02:30", "03:30")  # 2024-10-27: 03:00 -> 02:00, 02:30 happens twice
FALL_END = entry("sun", "01:00", "02:15")


@pytest.mark.parametrize("e, now, expected", [
    (LECTURE, local("2024-03-05 09:44:59"), False),  # Tuesday, before the warm-up
    (LECTURE, local("2024-03-05 09:45"), True),  # warm-up begins 15 min before 10:00
    (LECTURE, local("2024-03-05 11:29:59"), True),
    (LECTURE, local("2024-03-05 11:30"), False),  # the end is exclusive
    (LECTURE, local("2024-03-06 10:30"), False),  # Wednesday
    (LECTURE, local("2024-03-07 10:30"), True),  # Thursday
    (LECTURE, local("2024-03-05 10:30", "UTC"), False),  # 11:30 in Berlin: over
    (NIGHT, local("2024-03-08 21:59"), False),  # Friday
    (NIGHT, local("2024-03-08 23:00"), True),
    (NIGHT, local("2024-03-09 01:59"), True),  # Saturday morning: Friday's entry goes on
    (NIGHT, local("2024-03-09 02:00"), False),
    (NIGHT, local("2024-03-09 23:00"), False),  # Saturday evening: not a listed day
    (EARLY, local("2024-03-10 23:29"), False),  # Sunday, before Monday's warm-up
    (EARLY, local("2024-03-10 23:45"), True),  # Monday's warm-up began Sunday 23:30
    (EARLY, local("2024-03-11 00:59"), True),
    # spring forward (Berlin, 2024-03-31 02:00 CET -> 03:00 CEST): 02:30 does not exist; the
    # entry starts when the clock jumps past it (01:00 UTC), and ends at 04:00 CEST (02:00 UTC)
    (SPRING, utc("2024-03-31 00:59:59"), False),
    (SPRING, utc("2024-03-31 01:00"), True),
    (SPRING, utc("2024-03-31 01:59:59"), True),
    (SPRING, utc("2024-03-31 02:00"), False),
    (SPRING, local("2024-04-07 02:30"), True),  # the next Sunday: an ordinary day again
    # fall back (Berlin, 2024-10-27 03:00 CEST -> 02:00 CET): 02:30 happens twice; a start is the
    # first 02:30 (00:30 UTC), an end the second (02:15 CET = 01:15 UTC)
    (FALL_START, utc("2024-10-27 00:29:59"), False),
    (FALL_START, utc("2024-10-27 00:30"), True),
    (FALL_START, utc("2024-10-27 02:29:59"), True),  # 03:29:59 CET
    (FALL_START, utc("2024-10-27 02:30"), False),
    (FALL_END, utc("2024-10-27 01:14:59"), True),  # the second 02:14:59
    (FALL_END, utc("2024-10-27 01:15"), False),
])
def test_entry_is_active(e: ScheduleEntry, now: float, expected: bool) -> None:
    assert is_active(e, None, now) is expected


@pytest.mark.parametrize("default_tz, now, expected", [
    (None, utc("2024-03-05 10:15"), True),  # no zone anywhere: UTC
    (None, local("2024-03-05 10:15"), False),  # 09:15 UTC
    (BERLIN, local("2024-03-05 10:15"), True),  # the settings' zone
    ("America/New_York", local("2024-03-05 10:15", "America/New_York"), True),
    ("America/New_York", local("2024-03-05 10:15"), False),
])
def test_default_time_zone(default_tz: str | None, now: float, expected: bool) -> None:
    e = entry("tue", "10:00", "11:00", tz=None)
    assert is_active(e, default_tz, now) is expected


SPEC = AppSpec(name="demo", image="x", port=8888, probe=Probe(path="/"), pool=Pool(size=3),
               schedule=[entry("tue", "10:00", "11:30", size=120), entry("tue", "10:00", "10:30", size=150),
                         entry("wed", "09:00", "10:00", size=1)])
TUESDAY_10_15 = local("2024-03-05 10:15")
TUESDAY_10_45 = local("2024-03-05 10:45")
WEDNESDAY_09_30 = local("2024-03-06 09:30")


@pytest.mark.parametrize("override, now, size, source", [
    (PoolOverride(app="demo"), local("2024-03-05 09:00"), 3, "catalogue"),
    (PoolOverride(app="demo"), TUESDAY_10_15, 150, "schedule tue 10:00-10:30"),  # the largest active entry
    (PoolOverride(app="demo"), TUESDAY_10_45, 120, "schedule tue 10:00-11:30"),
    (PoolOverride(app="demo"), WEDNESDAY_09_30, 3, "catalogue"),  # an entry smaller than pool.size
    (PoolOverride(app="demo", size=5), TUESDAY_10_15, 5, "scale"),  # admin scale overrides
    (PoolOverride(app="demo", size=5, until=TUESDAY_10_15 + 60), TUESDAY_10_15, 5,
     "scale until 2024-03-05T09:16:00Z"),
    (PoolOverride(app="demo", size=5, until=TUESDAY_10_15), TUESDAY_10_15, 150, "schedule tue 10:00-10:30"),  # expired
    (PoolOverride(app="demo", size=5, paused=True), TUESDAY_10_15, 0, "paused"),
])
def test_target_names_its_rule(override: PoolOverride, now: float, size: int, source: str) -> None:
    assert target(SPEC, override, now, None) == (size, source)


def test_keeper_plans_for_the_schedule() -> None:
    plan = plan_top_up(spec=SPEC, override=PoolOverride(app="demo"), records=[], total=0, max_instances=500,
                       failures=0, hold_until=0.0, now=TUESDAY_10_15)
    assert plan.target == 150


def test_active_keeps_catalogue_order() -> None:
    assert [e.size for e in active(SPEC.schedule, None, TUESDAY_10_15)] == [120, 150]


APP = """
[apps.demo]
image = "x"
port = 8888
[apps.demo.probe]
path = "healthz"
[[apps.demo.schedule]]
days = ["tue", "thu"]
start = "10:00"
end = "11:30"
timezone = "Europe/Berlin"
size = 120
warm_up = "15m"
"""


def test_catalogue_schedule_parses() -> None:
    catalogue = parse(APP + '[settings]\ntimezone = "America/New_York"\n')
    (e,) = catalogue.apps["demo"].schedule
    assert (e.days, e.start, e.end, e.size, e.warm_up, e.timezone) == (["tue", "thu"], "10:00", "11:30", 120,
                                                                      900, BERLIN)
    assert catalogue.settings.timezone == "America/New_York"


@pytest.mark.parametrize("change, field, words", [
    (('"tue", "thu"', '"tue", "thursday"'), "apps.demo.schedule[0].days[1]", "Invalid enum value 'thursday'"),
    (('days = ["tue", "thu"]', "days = []"), "apps.demo.schedule[0].days", "length >= 1"),
    (('start = "10:00"', 'start = "25:00"'), "apps.demo.schedule[0].start", "regex"),
    (('end = "11:30"', 'end = "11.30"'), "apps.demo.schedule[0].end", "regex"),
    (('end = "11:30"', 'end = "10:00"'), "apps.demo.schedule[0]", "must differ from start"),
    (('"Europe/Berlin"', '"Europe/Berlln"'), "apps.demo.schedule[0].timezone", "unknown time zone"),
    (('warm_up = "15m"', 'warm_up = "soon"'), "apps.demo.schedule[0].warm_up", "duration"),
    (("size = 120", "size = -1"), "apps.demo.schedule[0].size", ">= 0"),
    (("size = 120", "size = 120\nsizes = 3"), "apps.demo.schedule[0].sizes", "unknown field"),
])
def test_bad_schedule_names_the_field(change: tuple[str, str], field: str, words: str) -> None:
    with pytest.raises(CatalogueError) as info:
        parse(APP.replace(*change))
    assert info.value.field == field and words in info.value.problem, str(info.value)


def test_bad_default_time_zone_names_the_field() -> None:
    with pytest.raises(CatalogueError) as info:
        parse(APP + '[settings]\ntimezone = "Mars/Base"\n')
    assert info.value.field == "settings.timezone" and "unknown time zone" in info.value.problem
