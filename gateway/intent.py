"""What a request to `/launch/<app>` is, as the browser says it (Fetch Metadata): only a tab's
navigation takes a session (or a frame's, inside a page the app's `frame_ancestors` allows);
fetch(), images, other frames, prefetch and prerender take none.

Browsers send `Sec-Fetch-*` only to HTTPS origins and localhost; a client that sends none (curl,
an old browser, plain HTTP) is judged as before: its GET claims.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal
from urllib.parse import urlsplit

Verdict = Literal["claim", "prefetch", "frame", "not_navigation"]

# destinations of a navigation inside a page rather than of a tab ("nested-navigate" was Chrome's
# early Sec-Fetch-Mode for these)
FRAME_DESTINATIONS = frozenset({"iframe", "frame", "fencedframe", "embed", "object"})
_PREFETCH_WORDS = ("prefetch", "prerender", "preview")


def _lower(headers: Mapping[str, str], name: str) -> str:
    return headers.get(name, "").strip().lower()


def speculative(headers: Mapping[str, str]) -> bool:
    """A prefetch or prerender (Sec-Purpose, or the older Purpose / X-Purpose / X-Moz)."""
    for name in ("Sec-Purpose", "Purpose", "X-Purpose", "X-Moz"):
        value = _lower(headers, name)
        if value and any(word in value for word in _PREFETCH_WORDS):
            return True
    return False


def _origin_of(url: str) -> str:
    """`scheme://host[:port]` of a URL, lowercased, default port dropped; "" when it has none."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return ""
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    scheme = parts.scheme.lower()
    default = 443 if scheme == "https" else 80
    return f"{scheme}://{host.lower()}" + (f":{port}" if port is not None and port != default else "")


def allowed_parent(parent: str, frame_ancestors: Sequence[str]) -> bool:
    """A framing page's origin matches one of the app's sources (an origin, "*." a subdomain of one,
    ":*" any port), as CSP matches `frame-ancestors` host sources. 'self' is not matched here."""
    if not parent:
        return False
    scheme, _, hostport = parent.partition("://")
    host, port = _split_port(hostport, scheme)
    for source in frame_ancestors:
        s_scheme, sep, s_hostport = source.strip().lower().rstrip("/").partition("://")
        if not sep or s_scheme != scheme:
            continue
        s_host, s_port = _split_port(s_hostport, s_scheme)
        if s_port not in ("*", port):
            continue
        if s_host == host or (s_host.startswith("*.") and host.endswith(s_host[1:])):
            return True
    return False


def _split_port(hostport: str, scheme: str) -> tuple[str, str]:
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host, port = host + "]", tail.lstrip(":")
    else:
        host, _, port = hostport.partition(":")
    return host, port or ("443" if scheme == "https" else "80")


def frame_verdict(headers: Mapping[str, str], frame_ancestors: Sequence[str]) -> Verdict:
    """Whether a frame's navigation to `/launch/` may claim: only from a parent the app allows.

    The parent is the page that started the navigation, as the browser says it (neither header can
    be set by a page's script): `Sec-Fetch-Site: same-origin` is the gateway's own page in that frame
    (the waiting room's retry, "start a new session"), which the browser shows there only when the
    frame's ancestors passed the app's policy, so it claims when the app names any framing site;
    otherwise the `Referer`'s origin must be listed (a framing page that sends no Referer is refused).
    An empty list (the default, 'self') or 'none': no frame claims.
    """
    if not frame_ancestors or "'none'" in frame_ancestors:
        return "frame"
    site = _lower(headers, "Sec-Fetch-Site")
    parent = _origin_of(headers.get("Referer", ""))
    if site == "same-origin":
        return "claim"
    return "claim" if allowed_parent(parent, frame_ancestors) else "frame"


def launch_verdict(headers: Mapping[str, str], frame_ancestors: Sequence[str] = ()) -> Verdict:
    """Whether a `/launch/` request may claim ("claim") or why not.

    A frame navigation claims only when the page framing it is allowed by `frame_ancestors` (the
    app's catalogue list; empty: frames claim nothing), see `frame_verdict`.
    """
    if speculative(headers):
        return "prefetch"
    mode, dest = _lower(headers, "Sec-Fetch-Mode"), _lower(headers, "Sec-Fetch-Dest")
    if not mode and not dest:
        return "claim"  # the client says nothing about the request: as before Fetch Metadata
    if mode == "nested-navigate" or dest in FRAME_DESTINATIONS:
        if mode in ("navigate", "nested-navigate", ""):
            return frame_verdict(headers, frame_ancestors)
        return "not_navigation"  # e.g. fetch() with a frame destination cannot happen: be strict
    if mode in ("navigate", "") and dest in ("document", ""):
        return "claim"
    return "not_navigation"
