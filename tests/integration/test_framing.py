"""Inside a course page: the gateway's `frame-ancestors` rule on its pages and on instances'
answers, claims from allowed frames only, and cookies made for a third-party frame over HTTPS.

Real nats-server and KV records, the real gateway on a loopback port, an in-process upstream that
answers with the headers the test asks for, a stand-in claimer that counts claims.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec
import pytest
from nats.aio.client import Client as NATS

from swarmpool.bus.messages import Claimed, ClaimRefused
from swarmpool.bus.spec import AppSpec, Catalogue, Duration, FrameAncestor, Settings
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import new_instance_id
from tests.integration.test_gateway import Claimer, claimed_instance, claimer  # noqa: F401
from tests.integration.test_gateway_security import World, world

LMS = "https://moodle.example.org"
SELF = "frame-ancestors 'self'"
EMBED = f"frame-ancestors {LMS}"
FRAME = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "cross-site"}
HTTPS = {"X-Forwarded-Proto": "https"}  # from loopback: a trusted proxy by default, so believed
INSTANCE_POLICY = "default-src 'self'; frame-ancestors *; img-src data:"


def framing_catalogue() -> Catalogue:
    return Catalogue(settings=Settings(claim_wait=Duration(0.3)), apps={
        "echo": AppSpec(name="echo", image="echo:latest", port=8000, deep_link="tree"),
        "embed": AppSpec(name="embed", image="echo:latest", port=8000, deep_link="tree",
                         frame_ancestors=(FrameAncestor(LMS),)),
    })


@pytest.fixture
async def gw(nc: NATS, subjects: Subjects, store: InstanceStore) -> AsyncIterator[World]:
    async with world(nc, subjects, store, framing_catalogue()) as w:
        yield w


def policies(headers: object) -> list[str]:
    return list(headers.getall("Content-Security-Policy", []))  # type: ignore[attr-defined]


async def test_gateway_pages_carry_the_apps_frame_ancestors(gw: World, claimer: Claimer) -> None:
    claimer.answer = lambda app: ClaimRefused(app=app, reason="empty")
    for path, policy, status in [("/", SELF, 200), ("/robots.txt", SELF, 200), ("/launch/nope", SELF, 404),
                                 ("/launch/echo", SELF, 503), ("/launch/embed", EMBED, 503),
                                 (f"/i/{new_instance_id()}/", SELF, 404)]:
        async with gw.http.get(gw.url + path, allow_redirects=False) as r:
            assert (r.status, policies(r.headers)) == (status, [policy]), path
            assert "X-Frame-Options" not in r.headers
    mine = [await claimed_instance(gw.store, gw.endpoint, app="embed")]
    claimer.answer = lambda app: ClaimRefused(app=app, reason="limit", sessions=[i.id for i in mine])
    async with gw.http.get(gw.url + "/launch/embed", headers={"Cookie": "sp_browser=" + "k" * 22}) as r:
        assert (r.status, policies(r.headers)) == (429, [EMBED])  # the limit page
    async with gw.http.get(gw.url + "/launch/embed", headers={**FRAME, "Referer": "https://evil.example/"}) as r:
        assert (r.status, policies(r.headers)) == (403, [EMBED])  # the refused frame's page: the browser hides it


async def test_an_instances_own_framing_rules_give_way_to_the_apps(gw: World) -> None:
    asked = [("h", f"Content-Security-Policy:{INSTANCE_POLICY}"),
             ("h", "Content-Security-Policy:frame-ancestors https://evil.example"),
             ("h", "Content-Security-Policy-Report-Only:frame-ancestors 'none'; script-src 'self'"),
             ("h", "X-Frame-Options:DENY"), ("h", "X-Kept:yes")]
    for app, policy in (("embed", EMBED), ("echo", SELF)):
        instance = await claimed_instance(gw.store, gw.endpoint, app=app)
        async with gw.http.get(gw.url + f"/i/{instance.id}/tree", params=asked) as r:
            assert r.status == 200
            assert policies(r.headers) == ["default-src 'self'; img-src data:", policy], app
            assert r.headers.getall("Content-Security-Policy-Report-Only") == ["script-src 'self'"]
            assert "X-Frame-Options" not in r.headers and r.headers["X-Kept"] == "yes"
        async with gw.http.get(gw.url + f"/i/{instance.id}", allow_redirects=False) as r:  # the gateway's redirect
            assert (r.status, policies(r.headers)) == (307, [policy])
        current = gw.store.get(app, instance.id)
        assert current is not None
        await gw.store.cas(current, msgspec.structs.replace(instance, state="retiring", reason="idle"))
        async with gw.http.get(gw.url + f"/i/{instance.id}/tree") as r:  # its session has ended
            assert r.status == 404 and "session has ended" in await r.text()
            assert policies(r.headers) == [policy]


@pytest.mark.parametrize(("app", "headers", "claims"), [
    ("embed", {**FRAME, "Referer": f"{LMS}/course/view.php?id=7"}, True),  # the course page frames it
    ("embed", {**FRAME, "Referer": LMS + "/"}, True),  # strict-origin-when-cross-origin: the origin only
    ("embed", {**FRAME, "Sec-Fetch-Site": "same-origin"}, True),  # its waiting room's retry inside the frame
    ("embed", {**FRAME, "Referer": "https://evil.example/moodle.example.org"}, False),
    ("embed", {**FRAME, "Referer": "http://moodle.example.org/"}, False),  # not the listed scheme
    ("embed", FRAME, False),  # a cross-site parent that sends no Referer
    ("echo", {**FRAME, "Referer": f"{LMS}/course"}, False),  # an app without the list: frames claim nothing
    ("echo", {**FRAME, "Sec-Fetch-Site": "same-origin"}, False),
])
async def test_a_frame_claims_only_for_an_allowed_parent(gw: World, claimer: Claimer, app: str,
                                                         headers: dict[str, str], claims: bool) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint, app=app)
    claimer.answer = lambda name: Claimed(id=instance.id, app=name, endpoint=gw.endpoint)
    async with gw.http.get(gw.url + f"/launch/{app}", headers=headers, allow_redirects=False) as r:
        assert r.status == (303 if claims else 403)
        if not claims:
            assert instance.id not in await r.text() and "Set-Cookie" not in r.headers
    assert claimer.requests == ([app] if claims else [])


async def test_cookies_of_an_embeddable_app_over_https_work_in_a_third_party_frame(
        gw: World, claimer: Claimer) -> None:
    instance = await claimed_instance(gw.store, gw.endpoint, app="embed")
    claimer.answer = lambda name: Claimed(id=instance.id, app=name, endpoint=gw.endpoint)
    frame = {**FRAME, "Referer": LMS + "/"}
    async with gw.http.get(gw.url + "/launch/embed", headers={**frame, **HTTPS}, allow_redirects=False) as r:
        assert r.status == 303
        cookie = r.headers["Set-Cookie"]
    assert cookie.startswith("__Host-sp_browser=") and "Path=/;" in cookie and "HttpOnly" in cookie
    assert cookie.endswith("; SameSite=None; Secure; Partitioned")
    set_cookie = [("h", "Set-Cookie:kernel=1; Path=/; SameSite=Lax")]
    async with gw.http.get(gw.url + f"/i/{instance.id}/tree", params=set_cookie, headers=HTTPS) as r:
        assert r.headers["Set-Cookie"] == f"kernel=1; Path=/i/{instance.id}; SameSite=None; Secure; Partitioned"

    # plain HTTP (nothing a browser would keep as Secure), or an app without the list: as before
    async with gw.http.get(gw.url + "/launch/embed", headers=frame, allow_redirects=False) as r:
        assert "SameSite=Lax" in r.headers["Set-Cookie"] and "Partitioned" not in r.headers["Set-Cookie"]
    async with gw.http.get(gw.url + f"/i/{instance.id}/tree", params=set_cookie) as r:
        assert r.headers["Set-Cookie"] == f"kernel=1; Path=/i/{instance.id}; SameSite=Lax"
    echo = await claimed_instance(gw.store, gw.endpoint, app="echo")
    claimer.answer = lambda name: Claimed(id=echo.id, app=name, endpoint=gw.endpoint)
    async with gw.http.get(gw.url + "/launch/echo", headers=HTTPS, allow_redirects=False) as r:
        assert "SameSite=Lax" in r.headers["Set-Cookie"] and "Partitioned" not in r.headers["Set-Cookie"]
    async with gw.http.get(gw.url + f"/i/{echo.id}/tree", params=set_cookie, headers=HTTPS) as r:
        assert r.headers["Set-Cookie"] == f"kernel=1; Path=/i/{echo.id}; SameSite=Lax"
