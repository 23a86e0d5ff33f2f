"""`swarmpool admin reload FILE` against a real pool: new apps warm up, removed ones drain (their claimed
session goes on), a changed command recycles the warm instances and never the claimed one, the gateway
follows the catalogue on the bus, and a bad file is refused as at start with nothing changed. A lecture calendar
(.ics) named by the catalogue travels with it: reload raises the target during its event, and a host started later,
without the file, runs the same calendar from the bus."""

from __future__ import annotations

import asyncio
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import nats
import pytest

from swarmpool.bus.messages import PoolOverride
from swarmpool.bus.state import CatalogueStore
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import parse
from swarmpool.functions.policy import target
from swarmpool.host import functions_host, status_target
from tests.integration.test_admin import admin, status_json
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker

SECOND_APP = """
[apps.echo2]
image = "swarmpool/echo:latest"
port = 8888
[apps.echo2.probe]
path = "healthz"
timeout = "60s"
interval = 0.1
[apps.echo2.pool]
size = 1
[apps.echo2.limits]
memory = "96m"
"""
# the echo image's own command, named: another spec, the same behaviour
COMMAND = 'deep_link = "hello"\ncommand = ["python3", "/app/app.py"]'


async def check(path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "swarmpool.cli", "check", str(path),
                                                stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


async def test_reload_adds_recycles_and_removes(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = nats_server.url
    async with running_stack(url, namespace, echo_catalogue(size=2, max_=6), hosts=2, docker=False) as s:
        await s.wait_ready(2)
        launched = await s.launch()
        assert launched.status == 303
        claimed = s.records("claimed")[0] if s.records("claimed") else await wait_for(
            lambda: s.records("claimed") and s.records("claimed")[0], timeout=10, what="the claim")
        async with s.http.get(f"{s.url}{launched.headers['Location']}") as page:
            assert page.status == 200
        old_warm = {r.id for r in s.records() if r.state in ("ready", "starting")}

        changed = tmp_path / "changed.toml"
        changed.write_text(echo_catalogue(size=2, max_=6).replace('deep_link = "hello"', COMMAND) + SECOND_APP)
        code, out, err = await admin(url, namespace, "reload", str(changed))
        assert code == 0, err
        assert "added echo2" in out and "recycling echo" in out

        def recycled() -> bool:
            warm = [r for r in s.store.all("echo") if r.state == "ready"]
            return len(warm) == 2 and not {r.id for r in warm} & old_warm
        await wait_for(recycled, timeout=90, what="the warm echo instances to be replaced")
        await wait_for(lambda: [r for r in s.store.all("echo2") if r.state == "ready"], timeout=60,
                       what="the new app to warm up")
        still = s.store.get("echo", claimed.id)
        assert still is not None and still.instance.state == "claimed"  # never touched
        async with s.http.get(f"{s.url}{launched.headers['Location']}") as page:
            assert page.status == 200
        for host in s.hosts:  # every host follows the catalogue on the bus
            assert set(host.catalogue.apps) == {"echo", "echo2"}
        assert (await s.launch("echo2")).status == 303  # and so does the gateway

        removed = tmp_path / "removed.toml"
        removed.write_text(echo_catalogue(size=2, max_=6).split("[apps.echo]")[0] + SECOND_APP)
        code, out, err = await admin(url, namespace, "reload", str(removed))
        assert code == 0, err
        assert "removed (draining) echo" in out
        await wait_for(lambda: not [r for r in s.store.all("echo") if r.state in ("ready", "starting")],
                       timeout=30, what="the removed app's warm pool to drain")
        still = s.store.get("echo", claimed.id)
        assert still is not None and still.instance.state == "claimed"  # its session goes on
        async with s.http.get(f"{s.url}{launched.headers['Location']}") as page:
            assert page.status == 200
        assert (await s.launch("echo")).status == 404
        assert set(await status_json(url, namespace)) == {"echo2"}


async def test_reload_refuses_a_bad_file(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = nats_server.url
    async with running_stack(url, namespace, echo_catalogue(size=1), docker=False) as s:
        await s.wait_ready(1)
        catalogues = await CatalogueStore.open(s.nc, Subjects(namespace))
        try:
            good = tmp_path / "good.toml"
            good.write_text(echo_catalogue(size=1))
            assert (await admin(url, namespace, "reload", str(good)))[0] == 0
            await wait_for(catalogues.current, timeout=5, what="the stored catalogue")
            before = catalogues.current()
            bad = tmp_path / "bad.toml"
            bad.write_text(echo_catalogue(size=1).replace("port = 8888", 'port = "eighty"'))
            code, out, err = await admin(url, namespace, "reload", str(bad))
            assert code == 2 and out == ""
            check_code, check_err = await check(bad)
            assert check_code == 2 and err == check_err  # the same error as at start
            assert "apps.echo.port" in err
            assert catalogues.current() == before
            assert set(s.hosts[0].catalogue.apps) == {"echo"}
            assert (await status_json(url, namespace))["echo"]["target"] == 1
        finally:
            await catalogues.close()


async def test_reload_names_the_restart_only_settings_it_changes(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = nats_server.url
    async with running_stack(url, namespace, echo_catalogue(size=0, max_=1), gateway=False, docker=False):
        changed = tmp_path / "changed.toml"
        changed.write_text(echo_catalogue(size=0, max_=1).replace("heartbeat_interval = 0.5", "heartbeat_interval = 2")
                           .replace("claim_wait = 1.5", "claim_wait = 3"))
        code, out, err = await admin(url, namespace, "reload", str(changed))
        assert code == 0, err
        assert "restart-only, unchanged until the hosts and gateways restart: settings.heartbeat_interval" in out
        assert "claim_wait" not in out  # applied on reload


def weekly_lecture_around(now: float, summary: str) -> str:
    """A calendar of a weekly Berlin lecture that began a week ago, 30 minutes before `now`, for 2 hours: its
    second occurrence (an RRULE expansion, not the first event) is on now."""
    start = datetime.fromtimestamp(now, ZoneInfo("Europe/Berlin")).replace(second=0, microsecond=0)
    start -= timedelta(days=7, minutes=30)
    stamp = "%Y%m%dT%H%M%S"
    return "\r\n".join([
        "BEGIN:VCALENDAR", "VERSION:2.0", "PRODID:-//swarmpool tests//EN", "BEGIN:VEVENT", "UID:lecture@example.org",
        "DTSTAMP:20260101T000000Z", f"SUMMARY:{summary}", f"DTSTART;TZID=Europe/Berlin:{start.strftime(stamp)}",
        f"DTEND;TZID=Europe/Berlin:{(start + timedelta(hours=2)).strftime(stamp)}", "RRULE:FREQ=WEEKLY",
        "END:VEVENT", "END:VCALENDAR", ""])


async def test_reload_with_a_calendar_raises_the_target_on_every_host(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = nats_server.url
    plain = echo_catalogue(size=0, max_=2)
    async with running_stack(url, namespace, plain, gateway=False, docker=False) as s:
        assert (await status_json(url, namespace))["echo"]["target"] == 0
        now = time.time()
        course = tmp_path / "course"
        course.mkdir()
        (course / "lectures.ics").write_text(weekly_lecture_around(now, "Numerik I"))
        (course / "catalogue.toml").write_text(plain + '[[apps.echo.calendar]]\nfile = "lectures.ics"\nsize = 1\n')
        code, out, err = await admin(url, namespace, "reload", str(course / "catalogue.toml"))
        assert code == 0, err
        status = (await status_json(url, namespace))["echo"]
        assert (status["target"], status["target_source"]) == (1, "schedule Numerik I")
        await s.wait_ready(1)  # the keeper acts on it: the lecture's instance warms up

        # a host started later, with the old catalogue and no calendar on its disk, runs the stored calendar
        text = (course / "lectures.ics").read_bytes().decode()  # as sent: CRLF lines kept
        (course / "lectures.ics").unlink()
        late_nc = await nats.connect(url)
        try:
            async with functions_host(late_nc, parse(plain, "old.toml"), s.swarm, namespace, host="late",
                                      catalogue_text=plain, catalogue_source="old.toml") as late:
                assert late.catalogue.calendars == {"lectures.ics": text}
                assert late.catalogue_version == s.hosts[0].catalogue_version
                assert status_target(late, "echo") == 1
                spec = late.app("echo")
                assert spec is not None  # after the lecture (an injected moment), the catalogue's size again
                assert target(spec, PoolOverride(app="echo"), now + 3 * 3600, late.settings.timezone).size == 0
        finally:
            await late_nc.drain()

        # a bad calendar is refused by reload as by check (exit 2, naming the file), and nothing changes
        (course / "lectures.ics").write_text("BEGIN:VCALENDAR\nnot a content line\nEND:VCALENDAR\n")
        code, out, err = await admin(url, namespace, "reload", str(course / "catalogue.toml"))
        assert code == 2 and out == "", (code, out, err)
        assert "lectures.ics: not a valid iCalendar file" in err and "apps.echo.calendar[0].file" in err
        check_code, check_err = await check(course / "catalogue.toml")
        assert check_code == 2 and check_err == err
        status = (await status_json(url, namespace))["echo"]
        assert (status["target"], status["target_source"]) == (1, "schedule Numerik I")
