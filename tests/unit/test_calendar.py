"""Class schedules from a lecture calendar (.ics): recurrences (RRULE, RDATE, EXDATE) and zones (TZID, VTIMEZONE)
expanded around `now` by the iCalendar library, the target they set across DST changes, the catalogue loading
the calendar next to it (stored with it), and a bad calendar named with its file (the CLI exits 2)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from swarmpool.bus.messages import PoolOverride
from swarmpool.bus.spec import CalendarSource
from swarmpool.bus.state import catalogue_version
from swarmpool.catalogue import CatalogueError, load, parse
from swarmpool.deploy import Options, cluster_catalogue
from swarmpool.functions.policy import target
from swarmpool.functions.schedule import calendar_active, lectures

BERLIN_VTIMEZONE = """BEGIN:VTIMEZONE
TZID:Europe/Berlin
BEGIN:DAYLIGHT
TZOFFSETFROM:+0100
TZOFFSETTO:+0200
TZNAME:CEST
DTSTART:19700329T020000
RRULE:FREQ=YEARLY;BYMONTH=3;BYDAY=-1SU
END:DAYLIGHT
BEGIN:STANDARD
TZOFFSETFROM:+0200
TZOFFSETTO:+0100
TZNAME:CET
DTSTART:19701025T030000
RRULE:FREQ=YEARLY;BYMONTH=10;BYDAY=-1SU
END:STANDARD
END:VTIMEZONE
"""

# Tuesdays 10:00-11:30 Berlin time from 6 Oct 2026 to 30 Mar 2027: across the change to CET (25 Oct 2026) and
# back to CEST (28 Mar 2027); 10 Nov is cancelled (EXDATE), Thursday 12 Nov 14:00 is added (RDATE), and
# 1 Dec moves to 14:00 (RECURRENCE-ID)
LECTURES = ("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//swarmpool tests//EN\r\n"
            + BERLIN_VTIMEZONE.replace("\n", "\r\n") + """BEGIN:VEVENT
UID:numerik-1@example.org
DTSTAMP:20260901T000000Z
SUMMARY:Numerik I
DTSTART;TZID=Europe/Berlin:20261006T100000
DTEND;TZID=Europe/Berlin:20261006T113000
RRULE:FREQ=WEEKLY;BYDAY=TU;UNTIL=20270330T235959Z
EXDATE;TZID=Europe/Berlin:20261110T100000
RDATE;TZID=Europe/Berlin:20261112T140000
END:VEVENT
BEGIN:VEVENT
UID:numerik-1@example.org
DTSTAMP:20260901T000000Z
RECURRENCE-ID;TZID=Europe/Berlin:20261201T100000
SUMMARY:Numerik I (moved)
DTSTART;TZID=Europe/Berlin:20261201T140000
DTEND;TZID=Europe/Berlin:20261201T153000
END:VEVENT
BEGIN:VEVENT
UID:office-hours@example.org
DTSTAMP:20260901T000000Z
SUMMARY:Sprechstunde
DTSTART;TZID=Europe/Berlin:20261007T160000
DURATION:PT1H
RRULE:FREQ=WEEKLY
END:VEVENT
END:VCALENDAR
""".replace("\n", "\r\n"))


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def app_toml(calendar: str) -> str:
    return f"""
[apps.demo]
image = "swarmpool/echo:latest"
port = 8888
[apps.demo.pool]
size = 2
[[apps.demo.calendar]]
{calendar}
"""


NUMERIK = CalendarSource(ics=LECTURES, size=40, warm_up=15 * 60, match="numerik")  # type: ignore[arg-type]


@pytest.mark.parametrize("now, active", [
    # CEST (UTC+2): 10:00 is 08:00 UTC, its warm-up from 07:45 UTC
    ("2026-10-20T07:44:59", False), ("2026-10-20T07:45:00", True), ("2026-10-20T09:29:59", True),
    ("2026-10-20T09:30:00", False),
    # after the last Sunday of October (CET, UTC+1): an hour later in UTC
    ("2026-10-27T07:45:00", False), ("2026-10-27T08:44:59", False), ("2026-10-27T08:45:00", True),
    ("2026-10-27T10:29:59", True), ("2026-10-27T10:30:00", False),
    # CET until the last Sunday of March, CEST from then
    ("2027-03-23T08:44:59", False), ("2027-03-23T08:45:00", True), ("2027-03-23T10:29:59", True),
    ("2027-03-30T07:44:59", False), ("2027-03-30T07:45:00", True), ("2027-03-30T09:29:59", True),
    ("2027-03-30T09:30:00", False),
    ("2027-04-06T08:30:00", False),  # past UNTIL
    ("2026-11-10T09:30:00", False),  # EXDATE: no lecture that day
    ("2026-11-12T12:45:00", True),  # RDATE: Thursday 14:00 CET, warm-up from 13:45 CET
    ("2026-11-12T14:29:59", True), ("2026-11-12T14:30:00", False),  # an RDATE lasts as long as DTEND says
    ("2026-10-21T08:30:00", False),  # a Wednesday
    ("2026-12-01T09:30:00", False), ("2026-12-01T13:30:00", "Numerik I (moved)"),  # RECURRENCE-ID
])
def test_weekly_berlin_lecture_raises_the_target_at_the_right_utc_instants(now: str, active: bool | str) -> None:
    spec = parse(app_toml('ics = """' + LECTURES + '"""\nsize = 40\nwarm_up = "15m"\nmatch = "Numerik"')).apps["demo"]
    label = active if isinstance(active, str) else "Numerik I"
    found = target(spec, PoolOverride(app="demo"), utc(now))
    assert found == ((40, f"schedule {label}") if active else (2, "catalogue")), now
    assert [lecture.label for lecture in calendar_active(NUMERIK, None, utc(now))] == ([label] if active else [])


def test_exdate_skips_one_lecture_and_the_labels_are_the_summaries() -> None:
    tuesdays = lectures([], [NUMERIK], None, utc("2026-11-01T00:00"), utc("2026-11-20T00:00"))
    starts = [(lecture.label, datetime.fromtimestamp(lecture.start, timezone.utc).isoformat()) for lecture in tuesdays]
    assert starts == [
        ("Numerik I", "2026-11-03T09:00:00+00:00"),
        ("Numerik I", "2026-11-12T13:00:00+00:00"),  # the RDATE; 10 Nov is gone (EXDATE)
        ("Numerik I", "2026-11-17T09:00:00+00:00"),
    ]
    assert all(lecture.end - lecture.start == 5400 and lecture.size == 40 for lecture in tuesdays)
    every = CalendarSource(ics=LECTURES, size=5)
    assert {lecture.label for lecture in lectures([], [every], None, utc("2026-11-01T00:00"),
                                                   utc("2026-11-08T00:00"))} == {"Numerik I", "Sprechstunde"}


def test_an_endless_rule_is_expanded_only_around_now() -> None:
    """The office hours repeat weekly for ever: years ahead, asking is as quick as next week."""
    hours = CalendarSource(ics=LECTURES, size=3, match="sprechstunde")
    started = time.monotonic()
    assert [lecture.label for lecture in calendar_active(hours, None, utc("2040-10-03T14:30"))] == ["Sprechstunde"]
    assert calendar_active(hours, None, utc("2040-10-03T15:00")) == []  # 17:00 CEST: an hour after 16:00
    assert time.monotonic() - started < 5


def test_tzid_without_vtimezone_floating_and_all_day_events() -> None:
    """Exports often name a TZID without its VTIMEZONE; floating times and all-day events are in the
    source's zone (else the settings')."""
    ics = """BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:a\r\nSUMMARY:Lab\r
DTSTART;TZID=America/New_York:20261103T090000\r\nDTEND;TZID=America/New_York:20261103T100000\r
END:VEVENT\r\nBEGIN:VEVENT\r\nUID:b\r\nSUMMARY:Floating\r\nDTSTART:20261104T090000\r\nDTEND:20261104T100000\r
END:VEVENT\r\nBEGIN:VEVENT\r\nUID:c\r\nSUMMARY:Exam day\r\nDTSTART;VALUE=DATE:20261105\r\nEND:VEVENT\r
END:VCALENDAR\r\n"""
    source = CalendarSource(ics=ics, size=9, timezone="Asia/Tokyo")  # type: ignore[arg-type]
    assert [x.label for x in calendar_active(source, None, utc("2026-11-03T14:30"))] == ["Lab"]  # 09:30 EST
    assert [x.label for x in calendar_active(source, None, utc("2026-11-04T00:30"))] == ["Floating"]  # 09:30 JST
    assert [x.label for x in calendar_active(source, "UTC", utc("2026-11-04T15:30"))] == ["Exam day"]  # 00:30 JST
    assert calendar_active(source, None, utc("2026-11-05T15:00")) == []  # midnight in Tokyo: the day is over


def test_the_catalogue_reads_the_calendar_next_to_it_and_keeps_its_text(tmp_path: Path) -> None:
    (tmp_path / "ics").mkdir()
    (tmp_path / "ics" / "lectures.ics").write_text(LECTURES)
    (tmp_path / "catalogue.toml").write_text(app_toml('file = "ics/lectures.ics"\nsize = 40'))
    catalogue = load(tmp_path / "catalogue.toml")
    assert catalogue.calendars == {"ics/lectures.ics": LECTURES}
    assert catalogue.apps["demo"].calendar[0].ics == LECTURES
    lecture = target(catalogue.apps["demo"], PoolOverride(app="demo"), utc("2026-10-20T08:30"))
    assert lecture == (40, "schedule Numerik I")
    # a host parses the stored text with the stored calendars, never reading its own disk
    text = (tmp_path / "catalogue.toml").read_text()
    (tmp_path / "ics" / "lectures.ics").unlink()
    again = parse(text, str(tmp_path / "catalogue.toml"), calendars=catalogue.calendars)
    assert again.apps["demo"].calendar == catalogue.apps["demo"].calendar
    with pytest.raises(CatalogueError, match=r"ics/lectures.ics: the calendar file was not stored"):
        parse(text, str(tmp_path / "catalogue.toml"), calendars={})
    # the calendar is part of the catalogue's version: a new calendar alone is a new catalogue
    assert catalogue_version(text, catalogue.calendars) != catalogue_version(
        text, {"ics/lectures.ics": LECTURES.replace("Numerik I", "Numerik II")})
    assert catalogue_version(text) == catalogue_version(text, {})  # as before calendars existed
    # deployed, the one catalogue file carries the calendar's text
    (tmp_path / "ics" / "lectures.ics").write_text(LECTURES)
    deployed = parse(cluster_catalogue(text, Options(stack="sp"), str(tmp_path / "catalogue.toml")))
    assert deployed.apps["demo"].calendar[0].ics == LECTURES


@pytest.mark.parametrize("calendar, field, words", [
    ('file = "nope.ics"\nsize = 4', "apps.demo.calendar[0].file", "nope.ics: cannot read the calendar file"),
    ('file = "bad.ics"\nsize = 4', "apps.demo.calendar[0].file", "bad.ics: not a valid iCalendar file"),
    ('file = "empty.ics"\nsize = 4', "apps.demo.calendar[0].file", "empty.ics: no events (VEVENT)"),
    ('file = "rule.ics"\nsize = 4', "apps.demo.calendar[0].file", "rule.ics: "),
    ('size = 4', "apps.demo.calendar[0]", "expected either file"),
    ('file = "x.ics"\nics = "x"\nsize = 4', "apps.demo.calendar[0]", "expected either file"),
    ('file = "lectures.ics"', "apps.demo.calendar[0]", "size"),
    ('file = "lectures.ics"\nsize = 4\nweekly = true', "apps.demo.calendar[0].weekly", "unknown field"),
])
def test_a_bad_calendar_names_the_file_and_the_field(tmp_path: Path, calendar: str, field: str, words: str) -> None:
    write_calendars(tmp_path)
    (tmp_path / "catalogue.toml").write_text(app_toml(calendar))
    with pytest.raises(CatalogueError) as err:
        load(tmp_path / "catalogue.toml")
    assert err.value.field == field and words in err.value.problem, str(err.value)


def write_calendars(folder: Path) -> None:
    (folder / "lectures.ics").write_text(LECTURES)
    (folder / "bad.ics").write_text("BEGIN:VCALENDAR\nthis is not a content line\nEND:VCALENDAR\n")
    (folder / "empty.ics").write_text("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nEND:VCALENDAR\r\n")
    (folder / "rule.ics").write_text(LECTURES.replace("FREQ=WEEKLY;BYDAY=TU", "FREQ=SOMETIMES;BYDAY=TU"))


@pytest.mark.parametrize("command", ["up", "functions", "check"])
def test_cli_exits_2_naming_the_calendar_file_before_touching_anything(tmp_path: Path, command: str) -> None:
    write_calendars(tmp_path)
    (tmp_path / "catalogue.toml").write_text(app_toml('file = "bad.ics"\nsize = 4'))
    args = [sys.executable, "-m", "swarmpool.cli", command, *(["--catalogue"] if command != "check" else []),
            str(tmp_path / "catalogue.toml")]
    if command == "functions":
        args += ["--nats-url", "nats://127.0.0.1:1"]  # never contacted: the catalogue fails first
    done = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "bad.ics: not a valid iCalendar file" in done.stderr and "apps.demo.calendar[0].file" in done.stderr
    assert "Traceback" not in done.stderr
