"""What a request to `/launch/<app>` is, as the browser says it (Fetch Metadata): only a tab's
navigation takes a session; fetch(), images, frames, prefetch and prerender take none.

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
    """`scheme://host[:port]` of a URL, lowercased; "" when it has none."""
    parts = urlsplit(url.strip())
    if not parts.scheme or not parts.netloc:
        return ""
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}"


def launch_verdict(headers: Mapping[str, str], frame_ancestors: Sequence[str] = ()) -> Verdict:
    """Whether a `/launch/` request may claim ("claim") or why not.

    A frame navigation claims only when the page framing it (its Referer's origin) is one of
    `frame_ancestors` (origins like "https://lms.example.org"); none are allowed yet.
    """
    if speculative(headers):
        return "prefetch"
    mode, dest = _lower(headers, "Sec-Fetch-Mode"), _lower(headers, "Sec-Fetch-Dest")
    if not mode and not dest:
        return "claim"  # the client says nothing about the request: as before Fetch Metadata
    if mode == "nested-navigate" or dest in FRAME_DESTINATIONS:
        if mode in ("navigate", "nested-navigate", ""):
            parent = _origin_of(headers.get("Referer", ""))
            allowed = {_origin_of(a) or a.strip().lower() for a in frame_ancestors}
            return "claim" if parent and parent in allowed else "frame"
        return "not_navigation"  # e.g. fetch() with a frame destination cannot happen: be strict
    if mode in ("navigate", "") and dest in ("document", ""):
        return "claim"
    return "not_navigation"
