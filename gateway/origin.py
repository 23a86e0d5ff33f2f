"""One origin, many instances: what the gateway does so that one instance cannot reach its neighbours.

Path mode (the default): every instance shares the gateway's origin, so the gateway confines what
an instance's responses can claim: cookies stay under `/i/<id>`, no service worker scope beyond
it, no origin-wide headers. Subdomain mode (`instance_domain`): each instance gets its own origin
`<label>.<instance_domain>`, which the browser isolates completely; the label is a one-way hash of
the id, so host names (in clear in DNS and TLS SNI) never carry the capability.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import istr

from swarmpool.ids import instance_prefix, valid_id

GATEWAY_COOKIE_PREFIXES = ("swarmpool", "sp_")  # the gateway's own cookies: never forwarded to an instance
LABEL_LENGTH = 20  # base32 characters of the host label: 100 bits, no collisions in practice
_LABEL_CONTEXT = b"swarmpool instance host label\x00"

# Response headers an instance may not send: each acts on the whole origin (or host), not one path.
ORIGIN_WIDE = frozenset(istr(h) for h in (
    "Service-Worker-Allowed",  # would let a worker at /i/<id>/sw.js control / and /launch/
    "Clear-Site-Data",  # would wipe every instance's storage on this origin
    "Strict-Transport-Security",  # the operator's front decides this for the host
))
# Request headers that only a trusted front may set, and this gateway never forwards.
NEVER_FORWARDED = frozenset(istr(h) for h in (
    "Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server", "X-Forwarded-Port",
))


def trusted_peer(remote: str | None) -> bool:
    """Forwarding headers are believed only from loopback (nginx) or a unix socket."""
    if remote is None:
        return True
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def bare_prefix(instance_id: str) -> str:
    """`/i/<id>` without its trailing slash: a cookie Path here covers exactly the instance."""
    return instance_prefix(instance_id).rstrip("/")


# ---- path mode: confining response headers ----


def _within(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + "/")


def confine_set_cookie(value: str, instance_id: str, strip_prefix: bool) -> str:
    """A Set-Cookie value scoped to the instance: Path moved under `/i/<id>`, Domain dropped.

    A cookie without Path already defaults to the request's directory, which is inside the prefix.
    """
    prefix = bare_prefix(instance_id)
    parts = [p.strip() for p in value.split(";")]
    kept = [parts[0]]
    for attribute in parts[1:]:
        name, _, attr_value = attribute.partition("=")
        name = name.strip().lower()
        if name == "domain" or not attribute:
            continue
        if name == "path":
            path = attr_value.strip()
            if not path.startswith("/"):
                path = prefix  # an invalid path makes the browser use the default; be explicit
            elif not _within(path, prefix):
                path = prefix + path.rstrip("/") if strip_prefix else prefix
            attribute = f"Path={path or prefix}"
        kept.append(attribute)
    return "; ".join(kept)


def confine_location(location: str, instance_id: str, request_host: str) -> str:
    """For strip-prefix apps: a Location on this host but outside the prefix goes back into it."""
    prefix = bare_prefix(instance_id)
    head, rest = "", location
    scheme, sep, after = location.partition("://")
    if sep and "/" not in scheme:  # absolute: scheme://authority/rest
        authority, slash, path = after.partition("/")
        if _host_port(scheme, authority) != _host_port(scheme, request_host):
            return location  # another site: none of our business
        head, rest = f"{scheme}://{authority}", slash + path
    if not rest.startswith("/") or rest.startswith("//"):
        return location  # relative (resolved inside the prefix already) or another site
    path = rest.split("?", 1)[0].split("#", 1)[0]
    return location if _within(path, prefix) else head + prefix + rest


def _host_port(scheme: str, authority: str) -> tuple[str, str]:
    """(host, port) of an authority, the port defaulted by the scheme; userinfo ignored."""
    hostport = authority.rsplit("@", 1)[-1].lower()
    host, port = hostport, ""
    if hostport.startswith("["):
        host, _, tail = hostport.partition("]")
        host, port = host + "]", tail.lstrip(":")
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    return host.rstrip("."), port or ("443" if scheme.lower() in ("https", "wss") else "80")


def without_gateway_cookies(cookie_header: str) -> str:
    """The Cookie request header without the gateway's own cookies."""
    kept = [c.strip() for c in cookie_header.split(";")
            if c.strip() and not c.strip().lower().startswith(GATEWAY_COOKIE_PREFIXES)]
    return "; ".join(kept)


# ---- subdomain mode: one origin per instance ----


def host_label(instance_id: str) -> str:
    """The instance's host label: a one-way hash of the id, so DNS and TLS SNI never carry the id.

    No secret is needed: ids are 128 random bits, so a label reveals nothing a guess could use,
    and every gateway computes the same label without sharing anything.
    """
    digest = hashlib.sha256(_LABEL_CONTEXT + instance_id.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:LABEL_LENGTH]


def _hostname(host: str) -> str:
    """`Host` without its port, lowercased (nginx forwards `$host`, which has none)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def label_of(host: str, instance_domain: str) -> str | None:
    """The instance label of a request's Host on the instance domain, or None for any other host."""
    name, domain = _hostname(host), _hostname(instance_domain)
    if not name.endswith("." + domain):
        return None
    label = name[: -len(domain) - 1]
    return label if label and "." not in label else None


def instance_url(scheme: str, instance_domain: str, instance_id: str, tail: str = "") -> str:
    """The absolute URL of an instance on its own origin: `scheme://<label>.<domain>/i/<id>/<tail>`."""
    return f"{scheme}://{host_label(instance_id)}.{instance_domain}{instance_prefix(instance_id)}{tail.lstrip('/')}"


def public_scheme(request: web.Request) -> str:
    """The scheme the browser used: the front's X-Forwarded-Proto when the peer is trusted."""
    if trusted_peer(request.remote):
        forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return request.scheme


def launch_location(request: web.Request, instance_domain: str | None, instance_id: str, deep_link: str) -> str:
    """Where `/launch/<app>` sends the browser: the instance's prefix, on its own origin if configured."""
    if instance_domain is None:
        return instance_prefix(instance_id) + deep_link.lstrip("/")
    return instance_url(public_scheme(request), instance_domain, instance_id, deep_link)


# ---- the middleware: every response's origin rules in one place ----

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INSTANCE_PATH = "/i/"


def _id_in_path(path: str) -> str | None:
    if not path.startswith(INSTANCE_PATH):
        return None
    candidate = path[len(INSTANCE_PATH):].split("/", 1)[0]
    return candidate if valid_id(candidate) else None


def origin_guard(instance_domain: str | None,
                 not_found: Callable[[web.Request], web.StreamResponse]) -> Middleware:
    """Subdomain mode: an instance host serves only its own `/i/<id>/`; the main host serves no `/i/`.

    `/i/<id>/...` asked on the main host (an old link) is redirected to the instance's host for
    GET and HEAD. Path mode lets every request through.
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if instance_domain is None:
            return await handler(request)
        label = label_of(request.host, instance_domain)
        instance_id = _id_in_path(request.rel_url.raw_path)
        if label is not None:
            if instance_id is None or host_label(instance_id) != label:
                return not_found(request)
            return await handler(request)
        if request.rel_url.raw_path.startswith(INSTANCE_PATH):
            if instance_id is not None and request.method in ("GET", "HEAD"):
                tail = request.rel_url.raw_path[len(instance_prefix(instance_id)):]
                query = request.rel_url.raw_query_string
                location = instance_url(public_scheme(request), instance_domain, instance_id, tail)
                raise web.HTTPTemporaryRedirect(location + (f"?{query}" if query else ""),
                                                headers={"Referrer-Policy": "no-referrer"})
            return not_found(request)
        return await handler(request)

    return guard
