"""The gateway's framing rule: an instance's `frame-ancestors` and X-Frame-Options give way to the
app's list; cookies of an embeddable app are made for a third-party frame."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from swarmpool.bus.spec import AppSpec, FrameAncestor
from swarmpool.gateway.framing import (
    apply_frame_policy,
    embeddable,
    frame_policy,
    third_party_cookie,
    without_frame_ancestors,
)
from swarmpool.gateway.proxy import downstream_headers
from swarmpool.gateway.routing import Route

LMS = "https://moodle.example.org"


def test_the_policy_is_the_list_or_self() -> None:
    assert frame_policy(()) == "frame-ancestors 'self'"
    assert frame_policy((LMS, "'self'")) == f"frame-ancestors {LMS} 'self'"
    assert frame_policy(("'none'",)) == "frame-ancestors 'none'"


@pytest.mark.parametrize(("given", "kept"), [
    ("default-src 'self'; frame-ancestors *; img-src data:", "default-src 'self'; img-src data:"),
    ("frame-ancestors 'none'", ""),
    ("FRAME-ANCESTORS https://evil.example ;script-src 'self'", "script-src 'self'"),
    ("script-src 'self'; frame-ancestors *, frame-ancestors 'none'; img-src *", "script-src 'self', img-src *"),
    ("script-src 'self';;", "script-src 'self'"),
    ("sandbox allow-scripts", "sandbox allow-scripts"),
    ("frame-src https://frame-ancestors.example", "frame-src https://frame-ancestors.example"),
])
def test_frame_ancestors_is_cut_from_a_policy_and_the_rest_kept(given: str, kept: str) -> None:
    assert without_frame_ancestors(given) == kept


def test_the_gateways_rule_replaces_the_instances() -> None:
    headers: CIMultiDict[str] = CIMultiDict([
        ("Content-Security-Policy", "default-src 'self'; frame-ancestors *"),
        ("Content-Security-Policy", "frame-ancestors https://evil.example"),
        ("Content-Security-Policy-Report-Only", "frame-ancestors 'none'; script-src 'none'"),
        ("X-Frame-Options", "ALLOW-FROM https://evil.example"), ("x-frame-options", "DENY"),
        ("Content-Type", "text/html"),
    ])
    apply_frame_policy(headers, (LMS,))
    assert headers.getall("Content-Security-Policy") == ["default-src 'self'", f"frame-ancestors {LMS}"]
    assert headers.getall("Content-Security-Policy-Report-Only") == ["script-src 'none'"]
    assert "X-Frame-Options" not in headers and headers["Content-Type"] == "text/html"
    plain: CIMultiDict[str] = CIMultiDict()
    apply_frame_policy(plain, ())
    assert plain.getall("Content-Security-Policy") == ["frame-ancestors 'self'"]


def test_embeddable_means_another_site_is_named() -> None:
    assert not embeddable(()) and not embeddable(("'self'",)) and not embeddable(("'none'",))
    assert embeddable((LMS,)) and embeddable(("'self'", LMS))


@pytest.mark.parametrize(("given", "made"), [
    ("a=1; Path=/i/x; HttpOnly", "a=1; Path=/i/x; HttpOnly; SameSite=None; Secure; Partitioned"),
    ("a=1; Path=/i/x; SameSite=Strict; secure", "a=1; Path=/i/x; SameSite=None; Secure; Partitioned"),
    ("a=1; samesite=lax; Partitioned; Max-Age=9", "a=1; Max-Age=9; SameSite=None; Secure; Partitioned"),
    ("a=b=c", "a=b=c; SameSite=None; Secure; Partitioned"),
])
def test_a_third_party_cookie_is_none_secure_partitioned(given: str, made: str) -> None:
    assert third_party_cookie(given) == made


def test_instance_cookies_are_confined_first_then_made_for_the_frame() -> None:
    route = Route(app="echo", endpoint="127.0.0.1:1", strip_prefix=False)
    upstream = CIMultiDict([("Set-Cookie", "s=1; Path=/; SameSite=Lax"), ("Content-Type", "text/html")])
    iid = "a" * 26
    assert downstream_headers(upstream, iid, route, "gw")["Set-Cookie"] == f"s=1; Path=/i/{iid}; SameSite=Lax"
    assert downstream_headers(upstream, iid, route, "gw", third_party=True)["Set-Cookie"] == (
        f"s=1; Path=/i/{iid}; SameSite=None; Secure; Partitioned")


def test_the_spec_field_travels_as_strings() -> None:
    import msgspec

    from swarmpool.bus.spec import dec_hook, enc_hook

    spec = AppSpec(name="echo", image="e", port=1, frame_ancestors=(FrameAncestor(LMS),))
    again = msgspec.json.decode(msgspec.json.encode(spec, enc_hook=enc_hook), type=AppSpec, dec_hook=dec_hook)
    assert again.frame_ancestors == (LMS,)
