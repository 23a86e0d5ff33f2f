"""Which `/launch/` requests may claim, from what the browser says a request is (Fetch Metadata)."""

from __future__ import annotations

import pytest

from swarmpool.gateway.intent import launch_verdict

TAB = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Sec-Fetch-Site": "none", "Sec-Fetch-User": "?1"}
LMS = "https://lms.example.org"


@pytest.mark.parametrize(("headers", "expected"), [
    ({}, "claim"),  # no Fetch Metadata at all (curl, old browsers, plain HTTP): as before
    ({"User-Agent": "curl/8"}, "claim"),
    (TAB, "claim"),  # typed URL, bookmark, a click on a link
    ({**TAB, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-User": "?0"}, "claim"),  # the waiting room's refresh
    ({"Sec-Fetch-Mode": "navigate"}, "claim"),  # early Chrome: mode without dest
    ({"Sec-Fetch-Dest": "document"}, "claim"),
    ({"sec-fetch-mode": "NAVIGATE", "sec-fetch-dest": "Document"}, "claim"),  # case does not matter
    ({"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}, "not_navigation"),  # fetch() / XHR
    ({"Sec-Fetch-Mode": "same-origin", "Sec-Fetch-Dest": "empty"}, "not_navigation"),
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}, "not_navigation"),  # <img>
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "script"}, "not_navigation"),  # <script>
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "style"}, "not_navigation"),
    ({"Sec-Fetch-Mode": "websocket", "Sec-Fetch-Dest": "websocket"}, "not_navigation"),
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "embed"}, "not_navigation"),  # <embed> load
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "image"}, "not_navigation"),  # no such navigation
    ({"Sec-Fetch-Dest": "empty"}, "not_navigation"),
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}, "frame"),  # <iframe src=/launch/...>
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "frame"}, "frame"),
    ({"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "fencedframe"}, "frame"),
    ({"Sec-Fetch-Mode": "nested-navigate"}, "frame"),  # early Chrome's frame navigation
    ({**TAB, "Sec-Purpose": "prefetch"}, "prefetch"),  # <link rel=prefetch>, speculation rules
    ({**TAB, "Sec-Purpose": "prefetch;prerender"}, "prefetch"),  # prerender
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty", "Sec-Purpose": "prefetch"}, "prefetch"),
    ({"Purpose": "prefetch"}, "prefetch"),  # older Chrome, Firefox
    ({"X-Purpose": "preview"}, "prefetch"),  # Safari's top-sites preview
    ({"X-Moz": "prefetch"}, "prefetch"),
])
def test_launch_verdict(headers: dict[str, str], expected: str) -> None:
    assert launch_verdict(headers) == expected


FRAME = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe", "Sec-Fetch-Site": "cross-site"}


@pytest.mark.parametrize(("referer", "allowed", "expected"), [
    (f"{LMS}/course/7", (), "frame"),  # no list yet: no frame claims
    (f"{LMS}/course/7", (LMS,), "claim"),  # a parent the app allows to frame it
    (f"{LMS}/course/7", (LMS + "/",), "claim"),
    ("https://LMS.example.org/x", (LMS,), "claim"),
    ("https://evil.example/x", (LMS,), "frame"),
    ("https://lms.example.org:8443/x", (LMS,), "frame"),  # another port: another origin
    ("", (LMS,), "frame"),  # no Referer (no-referrer policy): the parent is unknown
    ("not a url", (LMS,), "frame"),
    ("https://lms.example.org:443/x", (LMS,), "claim"),  # the default port is the same origin
    ("http://lms.example.org/x", (LMS,), "frame"),  # another scheme: another origin
    ("https://lms.example.org.evil.example/x", (LMS,), "frame"),
    ("https://evil-lms.example.org/x", ("https://*.lms.example.org",), "frame"),
    ("https://a.lms.example.org/x", ("https://*.lms.example.org",), "claim"),  # CSP's subdomain wildcard
    ("https://lms.example.org/x", ("https://*.lms.example.org",), "frame"),  # "*." is not the parent domain
    ("https://lms.example.org:8443/x", ("https://lms.example.org:*",), "claim"),
    ("http://127.0.0.1:5000/page", ("http://127.0.0.1:5000",), "claim"),
    ("http://[::1]:5000/page", ("http://[::1]:5000",), "claim"),
    (f"{LMS}/course/7", ("'self'",), "frame"),  # 'self' is the gateway's own origin, never another site
    (f"{LMS}/course/7", ("'none'",), "frame"),
])
def test_a_frame_claims_only_for_an_allowed_parent(referer: str, allowed: tuple[str, ...], expected: str) -> None:
    assert launch_verdict({**FRAME, "Referer": referer}, allowed) == expected


@pytest.mark.parametrize(("headers", "allowed", "expected"), [
    # the gateway's own page in an allowed frame (the waiting room's retry; its pages send no Referer)
    ({**FRAME, "Sec-Fetch-Site": "same-origin"}, (LMS,), "claim"),
    ({**FRAME, "Sec-Fetch-Site": "same-origin"}, ("'self'",), "claim"),
    ({**FRAME, "Sec-Fetch-Site": "same-origin"}, (), "frame"),  # the default: no frame claims, as before
    ({**FRAME, "Sec-Fetch-Site": "same-origin"}, ("'none'",), "frame"),
    ({**FRAME, "Sec-Fetch-Site": "same-site", "Referer": f"{LMS}/x"}, (LMS,), "claim"),  # lms. and apps. of one site
    ({**FRAME, "Sec-Fetch-Site": "cross-site"}, (LMS,), "frame"),  # a cross-site parent that sent no Referer
    ({"Sec-Fetch-Mode": "nested-navigate", "Referer": f"{LMS}/x"}, (LMS,), "claim"),
    ({**FRAME, "Referer": f"{LMS}/x", "Sec-Purpose": "prefetch"}, (LMS,), "prefetch"),
    ({"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "iframe", "Referer": f"{LMS}/x"}, (LMS,), "not_navigation"),
    ({**TAB, "Referer": "https://evil.example/x", "Sec-Fetch-Site": "cross-site"}, (LMS,), "claim"),  # a tab: as before
])
def test_who_started_a_frames_navigation(headers: dict[str, str], allowed: tuple[str, ...], expected: str) -> None:
    assert launch_verdict(headers, allowed) == expected
