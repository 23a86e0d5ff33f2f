"""The lecture report as a pure function of a scripted event log: exact figures."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime

import pytest

from swarmpool.bus.messages import InstanceEvent, Link, Visit
from swarmpool.catalogue import CatalogueError, parse
from swarmpool.gateway.visits import browser_tag, session_key
from swarmpool.report import (AppReport, Point, Spread, as_csv, as_json, as_table, last_lecture, lecture, report,
                              spread, timeline)

T0 = 1_700_000_000.0  # the lecture starts
END = T0 + 3600.0
NOW = T0 + 4000.0

I1, I2, I3, I4, I5 = (c * 26 for c in "abcde")


def ev(app: str, id_: str, event: str, state: str, at: float, reason: str = "") -> InstanceEvent:
    return InstanceEvent(app=app, id=id_, event=event, state=state, at=T0 + at, reason=reason)


def click(at: float, outcome: str, browser: str = "", cause: str = "", instance: str = "",
          link: str = "") -> Visit:
    return Visit(kind="click", app="demo", at=T0 + at, outcome=outcome, cause=cause, browser=browser_tag(browser),
                 session=session_key(instance) if instance else "", link=link, gateway="gw-1")


def page(at: float, instance: str, gateway: str = "gw-1") -> Visit:
    return Visit(kind="page", app="demo", at=T0 + at, session=session_key(instance), gateway=gateway)


# a lecture: two warm instances are taken at once, a third student waits for the refill, a fourth
# gives up, one refill fails; a refusal by the limit, an expired link, a click nobody answered
LECTURE: list[InstanceEvent | Visit] = [
    ev("demo", I1, "created", "starting", -600), ev("demo", I2, "created", "starting", -600),
    ev("demo", I1, "ready", "ready", -500), ev("demo", I2, "ready", "ready", -480),
    click(-100, "served", "G", instance="z" * 26), page(-99, "z" * 26),  # before the lecture: not counted
    click(10, "served", "A", instance=I1), ev("demo", I1, "claimed", "claimed", 10), page(11.5, I1),
    click(12, "served", "B", instance=I2), ev("demo", I2, "claimed", "claimed", 12), page(14, I2),
    page(20, I2, gateway="gw-2"),  # the same page seen by another gateway: the first one counts
    click(13, "waiting", "C", cause="empty"),
    ev("demo", I3, "created", "starting", 15), ev("demo", I4, "created", "starting", 20),
    click(20, "waiting", "C", cause="empty"), click(25, "waiting", "D", cause="empty"),
    click(30, "waiting", "C", cause="empty"), click(40, "waiting", "D", cause="empty"),
    ev("demo", I3, "ready", "ready", 45),
    ev("demo", I4, "failed", "failed", 50, "did not become ready"), ev("demo", I4, "retiring", "retiring", 51),
    ev("demo", I4, "removed", "retiring", 55),
    click(60, "served", "C", instance=I3), ev("demo", I3, "claimed", "claimed", 60), page(63, I3),
    click(100, "refused", "A", cause="limit"),
    click(200, "refused", cause="link_expired", link="abcdef"),
    click(300, "waiting", "E", cause="unavailable"),
    ev("demo", I2, "retiring", "retiring", 612), ev("demo", I2, "removed", "retiring", 620),
    ev("demo", I1, "retiring", "retiring", 1210), ev("demo", I1, "removed", "retiring", 1215),
    ev("demo", I3, "retiring", "retiring", 2460), ev("demo", I3, "removed", "retiring", 2470),
    ev("demo", I5, "created", "starting", 3000), ev("demo", I5, "ready", "ready", 3030),
    click(3100, "served", "F", instance="f" * 26),  # its page never loaded
    click(3700, "served", "H", instance="g" * 26), page(3701, "g" * 26),  # after the lecture: not counted
]


def test_a_scripted_lecture_gives_exact_figures() -> None:
    rep = report(LECTURE, T0, END, NOW, cost_per_hour=0.5)
    assert list(rep.apps) == ["demo"]
    assert rep.apps["demo"] == AppReport(
        app="demo", served=3, clicks=12, sessions=4, pages=3,
        click_to_page=Spread(p50=2.0, p95=3.0, max=3.0, n=3),
        waiting_visits=6, longest_wait=47.0,  # C: from its first waiting-room visit (13) to its session (60)
        session_length=Spread(p50=1200.0, p95=2400.0, max=2400.0, n=3),
        session_bins={"<5m": 0, "5-15m": 1, "15-30m": 1, "30-60m": 1, "1-2h": 0, ">2h": 0},
        peak_concurrency=3, peak_at=T0 + 60,
        failures={"instance_failed": 1, "limit": 1, "link_expired": 1, "unavailable": 1},
        minutes_without_ready=50.05,  # 12..45 and 60..3030: 3003 s
        instance_hours=1.3681,  # 1215 + 620 + 2455 + 35 + 600 s within the lecture
        cost=0.68)


@pytest.mark.parametrize(("values", "expected"), [
    ([], None),
    ([4.0], Spread(p50=4.0, p95=4.0, max=4.0, n=1)),
    ([1.0, 2.0], Spread(p50=1.0, p95=2.0, max=2.0, n=2)),
    ([float(v) for v in range(1, 21)], Spread(p50=10.0, p95=19.0, max=20.0, n=20)),
    ([float(v) for v in range(100, 0, -1)], Spread(p50=50.0, p95=95.0, max=100.0, n=100)),
])
def test_percentiles_are_nearest_rank(values: list[float], expected: Spread | None) -> None:
    assert spread(values) == expected


@pytest.mark.parametrize(("events", "start", "end", "minutes"), [
    ([], T0, T0 + 600, 10.0),  # no instance at all: the whole window
    ([ev("x", I1, "created", "starting", -60), ev("x", I1, "ready", "ready", -30)], T0, T0 + 600, 0.0),
    ([ev("x", I1, "ready", "ready", 60), ev("x", I1, "claimed", "claimed", 120)], T0, T0 + 600, 9.0),
    ([ev("x", I1, "ready", "ready", -60), ev("x", I1, "failed", "failed", 300),
      ev("x", I2, "ready", "ready", 400), ev("x", I2, "removed", "retiring", 900)], T0, T0 + 600, 1.67),
])
def test_minutes_without_a_ready_instance(events: list[InstanceEvent], start: float, end: float,
                                          minutes: float) -> None:
    rep = report(events, start, end, NOW, apps=["x"])
    assert rep.apps["x"].minutes_without_ready == minutes


def test_without_a_browser_cookie_each_loaded_session_is_a_student_and_nothing_waits_longest() -> None:
    events: list[InstanceEvent | Visit] = [
        click(1, "served", instance=I1), page(2, I1), click(3, "served", instance=I2), page(5, I2),
        click(4, "waiting", cause="empty"), click(6, "waiting", cause="paused")]
    r = report(events, T0, END, NOW).apps["demo"]
    assert (r.served, r.waiting_visits, r.longest_wait, r.failures) == (2, 2, None, {})
    assert r.cost is None


def test_sessions_still_open_count_to_now_and_the_peak_sees_sessions_begun_before() -> None:
    events = [ev("x", I1, "claimed", "claimed", -100), ev("x", I2, "claimed", "claimed", 100),
              ev("x", I1, "retiring", "retiring", 200)]
    r = report(events, T0, END, T0 + 1000).apps["x"]
    assert (r.peak_concurrency, r.peak_at) == (2, T0 + 100)
    assert r.session_length == Spread(p50=900.0, p95=900.0, max=900.0, n=1)  # only I2 began in the window


def test_json_csv_and_table() -> None:
    rep = report(LECTURE, T0, END, NOW, cost_per_hour=0.5)
    assert json.loads(as_json(rep))["apps"]["demo"]["served"] == 3
    rows = list(csv.DictReader(io.StringIO(as_csv(rep))))
    assert rows[0]["served"] == "3" and rows[0]["failures"] == "instance_failed=1;limit=1;link_expired=1;unavailable=1"
    assert rows[0]["click_to_page_p95"] == "3.0" and rows[0]["cost"] == "0.68"
    table = as_table(rep)
    assert "students served      3" in table and "longest wait 47.0s" in table and "cost 0.68" in table


CATALOGUE = """
[settings]
timezone = "Europe/Berlin"
cost_per_instance_hour = 0.25

[apps.demo]
image = "swarmpool/echo:latest"
port = 8080
schedule = [{ days = ["tue"], start = "10:00", end = "11:30", size = 5, warm_up = "15m" }]
"""


def _at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_a_schedule_entrys_label_names_its_last_class_and_a_links_label_its_validity() -> None:
    catalogue = parse(CATALOGUE)
    assert catalogue.settings.cost_per_instance_hour == 0.25
    now = _at("2026-12-03T12:00:00+00:00")  # a Wednesday: the class was yesterday (Berlin: UTC+1)
    found = lecture(catalogue, [], "tue 10:00-11:30", now)
    assert found is not None
    assert (found.start, found.end, found.apps) == (_at("2026-12-01T09:00:00+00:00"),
                                                     _at("2026-12-01T10:30:00+00:00"), ("demo",))
    during = lecture(catalogue, [], "tue 10:00-11:30", _at("2026-12-08T09:10:00+00:00"))
    assert during is not None and during.start == _at("2026-12-08T09:00:00+00:00")
    link = Link(id="a" * 16, app="demo", expires=now - 600, label="week 3", created_at=now - 3600)
    found = lecture(catalogue, [link], "week 3", now)
    assert found is not None and (found.start, found.end, found.apps) == (now - 3600, now - 600, ("demo",))
    assert lecture(catalogue, [link], "week 4", now) is None
    last = last_lecture(catalogue, [link], now)
    assert last is not None and last.label == "week 3"  # it began after Tuesday's class


def test_a_negative_cost_names_its_field() -> None:
    with pytest.raises(CatalogueError, match="settings.cost_per_instance_hour"):
        parse(CATALOGUE.replace("0.25", "-1"))


def test_the_timeline_of_a_lecture() -> None:
    points = timeline(LECTURE, T0, T0 + 120, points=4)  # slices of 30 s, sampled at 15, 45, 75, 105
    assert points == [Point(at=T0 + 15, sessions=2, ready=0, waiting=3),  # C at 13 and 20, D at 25
                      Point(at=T0 + 45, sessions=2, ready=1, waiting=2),  # C at 30, D at 40; I3 ready at 45
                      Point(at=T0 + 75, sessions=3, ready=0, waiting=0),
                      Point(at=T0 + 105, sessions=3, ready=0, waiting=0)]


ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//swarmpool tests//EN
BEGIN:VEVENT
UID:numerik@example.org
DTSTART;TZID=Europe/Berlin:20261103T140000
DTEND;TZID=Europe/Berlin:20261103T153000
RRULE:FREQ=WEEKLY;BYDAY=TU
SUMMARY:Numerik I
END:VEVENT
END:VCALENDAR
"""


def test_a_lecture_calendars_event_title_names_its_last_class() -> None:
    ics = ICS.replace("\n", "\\n")
    catalogue = parse(f'[apps.demo]\nimage = "x"\nport = 1\n[[apps.demo.calendar]]\nics = "{ics}"\nsize = 5\n')
    now = _at("2026-12-03T12:00:00+00:00")  # Thursday: Tuesday's class, 14:00-15:30 in Berlin (UTC+1)
    found = lecture(catalogue, [], "Numerik I", now)
    assert found is not None
    assert (found.start, found.end, found.apps) == (_at("2026-12-01T13:00:00+00:00"),
                                                     _at("2026-12-01T14:30:00+00:00"), ("demo",))
    last = last_lecture(catalogue, [], now)
    assert last is not None and last.label == "Numerik I"
