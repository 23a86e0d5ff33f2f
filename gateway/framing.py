"""Who may show an app in a frame: the gateway's `frame-ancestors` policy on every answer, and the
cookie attributes that make a session work inside an allowed third-party frame.

The gateway alone decides framing: an instance's own `frame-ancestors` directives and its
`X-Frame-Options` are removed (the rest of its policy is kept), and the app's catalogue list (default
'self') is sent on the gateway's pages for the app and on every response of its instances.
"""

from __future__ import annotations

from collections.abc import Sequence

from multidict import CIMultiDict, istr

CSP = istr("Content-Security-Policy")
CSP_REPORT_ONLY = istr("Content-Security-Policy-Report-Only")
X_FRAME_OPTIONS = istr("X-Frame-Options")
DEFAULT_ANCESTORS = ("'self'",)


def frame_policy(ancestors: Sequence[str]) -> str:
    """The gateway's policy for an app: `frame-ancestors <list>`, 'self' when the list is empty."""
    return "frame-ancestors " + " ".join(ancestors or DEFAULT_ANCESTORS)


def without_frame_ancestors(policy: str) -> str:
    """A CSP header value without its `frame-ancestors` directives; the other directives unchanged.

    One header may carry several policies separated by commas; each loses the directive."""
    policies = []
    for one in policy.split(","):
        kept = [d.strip() for d in one.split(";")
                if d.strip() and d.strip().split(None, 1)[0].lower() != "frame-ancestors"]
        if kept:
            policies.append("; ".join(kept))
    return ", ".join(policies)


def apply_frame_policy(headers: CIMultiDict[str], ancestors: Sequence[str]) -> None:
    """Make the gateway's `frame-ancestors` the only framing rule of a response (in place)."""
    headers.popall(X_FRAME_OPTIONS, None)
    for name in (CSP, CSP_REPORT_ONLY):
        values = [without_frame_ancestors(v) for v in headers.popall(name, [])]
        for value in values:
            if value:
                headers.add(name, value)
    headers.add(CSP, frame_policy(ancestors))


def embeddable(ancestors: Sequence[str]) -> bool:
    """The app names sites that may frame it (more than the default 'self', and not 'none')."""
    return any(a not in ("'self'", "'none'") for a in ancestors)


def third_party_cookie(value: str) -> str:
    """A Set-Cookie value that a browser keeps and sends inside a cross-site frame, where it allows it:
    `SameSite=None; Secure; Partitioned` (CHIPS: kept apart per top-level site). HTTPS only."""
    parts = [p.strip() for p in value.split(";")]
    kept = [parts[0]] + [p for p in parts[1:]
                         if p and p.split("=", 1)[0].strip().lower() not in ("samesite", "secure", "partitioned")]
    return "; ".join([*kept, "SameSite=None", "Secure", "Partitioned"])
