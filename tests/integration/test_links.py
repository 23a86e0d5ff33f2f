"""Lecture links on the real thing: nats-server, two functions hosts, two gateways, Docker swarm, and
`swarmpool link` / `swarmpool admin links|revoke|rotate` as real processes. Unsigned, tampered, expired,
revoked, retired and over-budget links claim nothing; a valid one claims; the budget is one count
for both gateways."""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
import sys
import time
from contextlib import AsyncExitStack
from urllib.parse import parse_qs, urlsplit

import aiohttp
import msgspec
import nats
import pytest

from swarmpool.bus.links import Links
from swarmpool.bus.messages import ClaimRefused, ClaimRequest, Claimed, Instance, Requester
from swarmpool.bus.state import ensure_streams
from swarmpool.bus.wire import encode
from swarmpool.bus.subjects import Subjects
from swarmpool.launcher import serve_dashboard, serve_gateway
from swarmpool.natsd import EmbeddedNats, free_port
from bench.students import Attendance, wait_turn
from tests.integration.test_admin import swarmpool_cli
from tests.stack import Stack, cli_process, echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker


def catalogue(size: int) -> str:
    # the students here load no HTML page: refills start at the settle cap, shortened (not what is tested)
    text = echo_catalogue(size=size, max_=size * 3, settle_cap=1)
    return text.replace('deep_link = "hello"', 'deep_link = "hello"\nrequire_link = true', 1)


async def cli(nats_url: str, namespace: str, *args: str) -> tuple[int, str, str]:
    return await swarmpool_cli(nats_url, namespace, *args)


async def make_link(nats_url: str, namespace: str, gateway: str, *options: str) -> str:
    code, out, err = await cli(nats_url, namespace, "link", "echo", *options, "--gateway", gateway)
    assert code == 0, err
    (url,) = out.split()
    return url


async def click(url: str) -> tuple[int, str]:
    """One student's first click: a fresh browser (no cookie), the status and where it leads."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        async with http.get(url, allow_redirects=False) as response:
            body = await response.text()
            return response.status, response.headers.get("Location", body)


def claims_seen(s: Stack) -> set[str]:
    """Ids of every instance claimed while the test runs (filled by the records' changes)."""
    seen: set[str] = set()

    def saw(old: Instance | None, new: Instance | None) -> None:
        if new is not None and new.claimed_at is not None:
            seen.add(new.id)

    s.store.on_change(saw)
    return seen


async def links_json(nats_url: str, namespace: str) -> dict[str, dict[str, object]]:
    code, out, err = await cli(nats_url, namespace, "admin", "links", "--json")
    assert code == 0, err
    return {f["id"]: f for f in json.loads(out)["links"]}


def link_id(url: str) -> str:
    return parse_qs(urlsplit(url).query)["l"][0].split(".")[0]


async def test_only_a_valid_link_claims_and_its_budget_is_shared_by_two_gateways(
        nats_server, namespace, echo_image, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    async with running_stack(nats_server.url, namespace, catalogue(size=3), hosts=2, docker=False) as s:
        other_nc = await nats.connect(nats_server.url)  # the second gateway: its own connection and app
        port = free_port()
        async with serve_gateway(other_nc, s.catalogue, namespace, "127.0.0.1", port):
            other = f"http://127.0.0.1:{port}"
            await s.wait_ready(3)
            seen = claims_seen(s)
            url = await make_link(nats_server.url, namespace, s.url, "--for", "1h", "--max", "2", "--label", "L3")
            assert url.startswith(f"{s.url}/launch/echo?l=")
            query = url.removeprefix(s.url)

            # no link, a tampered one, one cut short, one of another app's path: nothing claimed
            assert (await click(f"{s.url}/launch/echo"))[0] == 403
            assert (await click(f"{other}/launch/echo?l="))[0] == 403
            assert (await click(s.url + query[:-1] + ("A" if query[-1] != "A" else "B")))[0] == 403
            assert (await click(s.url + query[:-5]))[0] == 403
            token = link_id(url)
            parts = parse_qs(urlsplit(url).query)["l"][0].split(".")
            later = ".".join([parts[0], str(int(parts[1]) + 86400), *parts[2:]])
            assert (await click(f"{s.url}/launch/echo?l={later}"))[0] == 403  # a longer life written in
            # the claimers refuse a claim without a link (or with an unknown one), whoever asks
            for link in ("", "aaaaaaaaaaaaaaaa"):
                reply = msgspec.json.decode((await s.nc.request(
                    Subjects(namespace).claim("echo"), encode(ClaimRequest(app="echo", wait=0.2, link=link)),
                    timeout=10)).data, type=Claimed | ClaimRefused)
                assert isinstance(reply, ClaimRefused) and reply.reason in ("link_missing", "link_revoked")
            assert not seen

            # the budget of 2: six students at once, three on each gateway: exactly two sessions
            answers = await asyncio.gather(*(click(base + query) for base in (s.url, other) * 3))
            statuses = sorted(status for status, _ in answers)
            assert statuses == [303, 303, 410, 410, 410, 410], answers
            assert all(where.startswith("/i/") for status, where in answers if status == 303)
            await wait_for(lambda: len(seen) == 2, timeout=10, what="two claimed instances")
            shown = (await links_json(nats_server.url, namespace))[token]
            assert (shown["claims"], shown["max"], shown["state"], shown["label"]) == (2, 2, "spent", "L3")
            status, body = await click(other + query)
            assert status == 410 and "used up" in body

            # revoked: refused on both gateways at once (403), nothing claimed
            await s.wait_ready(3)
            revoked = await make_link(nats_server.url, namespace, other, "--for", "1h")
            code, out, err = await cli(nats_server.url, namespace, "admin", "revoke", link_id(revoked)[:6])
            assert code == 0, err
            for base in (s.url, other):
                status, body = await click(base + revoked.removeprefix(other))
                assert status == 403 and "withdrawn" in body

            # expired: 410
            expiring = await make_link(nats_server.url, namespace, s.url, "--for", "1s")
            expires = int(parse_qs(urlsplit(expiring).query)["l"][0].split(".")[1])
            await wait_for(lambda: time.time() > expires + 0.05, timeout=5, what="the link to expire")
            status, body = await click(expiring)
            assert status == 410 and "expired" in body
            assert len(seen) == 2

            # rotation: a new key without a restart, the older link still claims until its key is retired
            before = await make_link(nats_server.url, namespace, s.url, "--for", "1h")
            code, out, err = await cli(nats_server.url, namespace, "admin", "rotate")
            assert code == 0 and "new link signing key" in out, err
            after = await make_link(nats_server.url, namespace, other, "--for", "1h")
            await s.wait_ready(2)
            assert (await click(after))[0] == 303  # signed with the new key: the gateway follows it
            assert (await click(before.replace(s.url, other)))[0] == 303
            code, out, err = await cli(nats_server.url, namespace, "admin", "rotate", "--retire")
            assert code == 0 and "retired" in out, err
            for refused in (before, after):  # both keys are retired now (a newer one signs)
                await wait_for(lambda: _status(click(refused), 403), timeout=10, what="a retired key's link refused")
            assert len(seen) == 4

            # no full token in any log line of the gateways and hosts (this process), nor in /metrics
            for u in (url, revoked, expiring, before, after):
                assert parse_qs(urlsplit(u).query)["l"][0] not in caplog.text
            async with s.http.get(f"{s.url}/metrics") as response:
                metrics = await response.text()
            assert token not in metrics and 'outcome="link_spent"' in metrics
        await other_nc.drain()


async def _status(answer: object, expected: int) -> bool:
    status, _ = await answer  # type: ignore[misc]
    return bool(status == expected)


async def test_a_place_in_line_and_the_browser_limit_keep_the_link_and_count_nothing(
        nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    text = catalogue(size=1).replace("max = 3", "max = 1", 1)
    text = text.replace("max_instances = 120", "max_instances = 120\nper_browser_limit = 1", 1)
    async with running_stack(nats_server.url, namespace, text, docker=False) as s:
        await s.wait_ready(1)
        url = await make_link(nats_server.url, namespace, s.url, "--for", "1h", "--max", "2")
        token = parse_qs(urlsplit(url).query)["l"][0]
        kept = f"/launch/echo?l={token}"

        async def claims() -> object:
            return (await links_json(nats_server.url, namespace))[link_id(url)]["claims"]

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as alice, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as bob:
            async with alice.get(url, allow_redirects=False) as first:
                assert first.status == 303
                session = first.headers["Location"].split("/")[2]
            async with alice.get(url, allow_redirects=False) as again:  # her browser's limit: 1
                assert again.status == 429 and f'action="{kept}"' in await again.text()
            async with bob.get(url, allow_redirects=False) as waiting:  # the pool is full: a place in line
                assert waiting.status == 303
                ticket = waiting.headers["Location"]
                assert ticket.startswith("/launch/echo/ticket/") and token not in ticket
            async with bob.get(s.url + ticket, allow_redirects=False) as page:  # the waiting page
                assert page.status == 200
            assert await claims() == 1  # neither the limit nor a place in line counted
            # bob's page holds its place (the ticket keeps the link: counted when his turn comes)
            holding = asyncio.create_task(wait_turn(bob, s.url, ticket, Attendance("bob")))

            code, _, err = await cli(nats_server.url, namespace, "admin", "retire", session)
            assert code == 0, err
            assert await asyncio.wait_for(holding, timeout=120)
            async with bob.get(s.url + ticket, allow_redirects=False) as turn:  # the page goes to its own URL
                assert turn.status == 303 and turn.headers["Location"].startswith("/i/")
            assert await claims() == 2
        assert (await click(url))[0] == 410


async def test_the_dashboard_makes_a_working_link(nats_server, namespace, echo_image, tmp_path) -> None:  # type: ignore[no-untyped-def]
    async with running_stack(nats_server.url, namespace, catalogue(size=1), docker=False) as s:
        ops = free_port()
        async with serve_dashboard(s.nc, namespace, "127.0.0.1", ops, tmp_path, None, s.url) as login, \
                aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.get(login) as response:
                page = await response.text()
            assert 'value="link" data-app="echo"' in page  # the verb table's button, on the app's row
            (csrf,) = set(re.findall(r'name="csrf" value="([^"]+)"', page))
            await s.wait_ready(1)
            form = {"csrf": csrf, "verb": "link", "app": "echo", "for_seconds": "2h", "max": "1", "label": "Lab 1"}
            async with http.post(f"http://127.0.0.1:{ops}/act", data=form, allow_redirects=False) as response:
                assert response.status == 200
                (url,) = re.findall(r'id="link" readonly size="100" value="([^"]+)"', await response.text())
            url = html.unescape(url)
            assert url.startswith(f"{s.url}/launch/echo?l=")
            assert (await click(url))[0] == 303
            assert (await click(url))[0] == 410  # its budget of one is spent


async def test_swarmpool_link_against_up_with_its_roles(tmp_path, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    """`swarmpool up` logs every part in as its bus role (permissions enforced by nats-server): the operator's
    `swarmpool link --state-dir` makes the link, the functions store it, the gateway reads the keys."""
    catalogue_file = tmp_path / "catalogue.toml"
    catalogue_file.write_text(catalogue(size=1))
    state, port = tmp_path / "state", free_port()
    async with AsyncExitStack() as stack:
        up, lines = await cli_process(stack, "up", "--catalogue", str(catalogue_file), "--port", str(port),
                                      "--dashboard-port", "0", "--state-dir", str(state), "--namespace", namespace)
        await wait_for(lambda: any("echo 1/1 ready" in line for line in lines) or up.returncode is not None,
                       timeout=90, what="warm-up")
        assert up.returncode is None, "".join(lines)
        gateway = f"http://127.0.0.1:{port}"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarmpool.cli", "link", "echo", "--for", "2h", "--max", "1", "--state-dir",
            str(state), "--namespace", namespace, "--gateway", gateway,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        (url,) = out.decode().split()
        assert (await click(f"{gateway}/launch/echo"))[0] == 403
        assert (await click(url))[0] == 303
        assert (await click(url))[0] == 410
        token = parse_qs(urlsplit(url).query)["l"][0]
        assert not any(token in line for line in lines)  # up's own log (INFO) names no token


async def test_every_link_is_listed_while_students_claim_on_it(nats_server: EmbeddedNats, namespace: str) -> None:
    """`admin links` and `admin revoke` find every link while students claim on them: each claim rewrites
    its link's record, and a listing taken meanwhile still names all of them (kv.keys(), an ordered watch,
    missed about one rewritten link in eight here)."""
    nc = await nats.connect(nats_server.url)
    try:
        subjects = Subjects(namespace)
        await ensure_streams(nc.jetstream(), subjects)
        links = Links(await nc.jetstream().key_value(subjects.config_bucket))
        made = {(await links.create("echo", 3600, None, "", Requester(), time.time()))[0].id for _ in range(5)}
        stop = asyncio.Event()

        async def students() -> int:
            claims = 0
            while not stop.is_set():
                for link_id in made:
                    assert await links.reserve(link_id, "echo", time.time()) is None
                    claims += 1
            return claims

        claiming = [asyncio.create_task(students()) for _ in range(2)]
        try:
            short = []
            deadline = time.monotonic() + 60
            for _ in range(150):
                if time.monotonic() > deadline:
                    break
                listed = {link.id for link in await links.all()}
                if listed != made:
                    short.append(len(listed))
        finally:
            stop.set()
            claims = sum(await asyncio.gather(*claiming))
        assert claims > 150, f"only {claims} claims: the links were hardly rewritten while listed"
        assert not short, f"{len(short)} listings missed links being claimed on (found {short[:5]} of 5)"
    finally:
        await nc.close()
