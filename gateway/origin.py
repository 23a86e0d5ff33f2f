"""One origin, many instances: what the gateway does so that one instance cannot reach its neighbours.

Path mode (the default): every instance shares the gateway's origin, so the gateway confines what
an instance's responses can claim: cookies stay under `/i/<id>`, no service worker scope beyond
it, no origin-wide headers. Subdomain mode (`instance_domain`): each instance gets its own origin
`<label>.<instance_domain>`, which the browser isolates completely; the label is a one-way hash of
the id, so host names (in clear in DNS and TLS SNI) never carry the capability.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware
from multidict import istr

from swarmpool.ids import instance_prefix, valid_id

# the gateway's own cookies (lowercase): never forwarded to an instance
GATEWAY_COOKIE_PREFIXES = ("swarmpool", "sp_", "__host-sp_", "__secure-sp_")
LABEL_LENGTH = 20  # base32 characters of the host label: 100 bits, no collisions in practice
_LABEL_CONTEXT = b"swarmpool instance host label\x00"

# Response headers an instance may not send: each acts beyond the response (on the whole origin,
# host or site, or on later requests to other paths), so one instance would act on its neighbours.
# Chosen by going through the IANA and Fetch/HTML header registries for headers whose scope is
# not the response or its document (docs/security-gateway.md says how); one line, one reason.
ORIGIN_WIDE = frozenset(istr(h) for h in (
    "Service-Worker-Allowed",  # would let a worker at /i/<id>/sw.js control / and /launch/
    "Clear-Site-Data",  # would wipe every instance's storage on this origin
    "Strict-Transport-Security",  # the operator's front decides this for the host
    "NEL",  # a Network Error Logging policy reports later URLs of the whole origin (others' /i/<id>/)
    "Report-To",  # names report endpoints the origin's NEL and other reports go to
    "Reporting-Endpoints",  # the same for the Reporting API v1
    "Alt-Svc",  # moves the whole origin's later traffic to another host or port
    "Origin-Agent-Cluster",  # the first answer decides the agent cluster of every page of the origin
    "Origin-Isolation",  # the earlier name of Origin-Agent-Cluster
    "Accept-CH",  # client-hint preferences the browser keeps for the whole origin
    "Critical-CH",  # retries the request with the origin's client hints (works with Accept-CH)
    "Set-Login",  # FedCM login status, kept per origin
    "Speculation-Rules",  # prefetch/prerender of any same-origin URL (/launch/ claims, others' paths)
    "Public-Key-Pins",  # host-wide certificate pins (obsolete, still dropped)
    "Public-Key-Pins-Report-Only",  # the same, reporting only
    "Expect-CT",  # host-wide Certificate Transparency policy (obsolete, still dropped)
    "Sec-Session-Registration",  # device-bound session credentials: binds the origin's cookies
    "Set-Cookie2",  # obsolete cookie header: escapes the Path confinement of Set-Cookie if ever honoured
    "Use-As-Dictionary",  # a compression dictionary whose match pattern (e.g. "/*") covers the whole origin
))
# Request headers that only a trusted front may set, and this gateway never forwards.
NEVER_FORWARDED = frozenset(istr(h) for h in (
    "Forwarded", "X-Original-URL", "X-Rewrite-URL", "X-Forwarded-Server", "X-Forwarded-Port",
))


DEFAULT_TRUSTED_PROXIES = ("127.0.0.0/8", "::1/128")  # nginx on the same machine


@functools.lru_cache(maxsize=16)
def _networks(proxies: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p, strict=False) for p in proxies)


def trusted_peer(remote: str | None, proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES) -> bool:
    """Forwarding headers are believed only from a configured proxy address or a unix socket."""
    return remote is None or _trusted(remote, tuple(proxies))


@functools.lru_cache(maxsize=4096)
def _trusted(remote: str, proxies: tuple[str, ...]) -> bool:
    """trusted_peer, parsed once per (address, proxies): a gateway sees few peers (its fronts)."""
    try:
        address = ipaddress.ip_address(remote.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in _networks(proxies))


def client_address(forwarded_for: Sequence[str], remote: str | None, proxies: Sequence[str],
                   trusted: bool | None = None) -> str:
    """The client's address: the peer, or, behind trusted proxies, the right-most address of their
    X-Forwarded-For chain that is not itself a trusted proxy (what a client wrote further left is
    never believed). `trusted`: trusted_peer(remote, proxies) when the caller has it already."""
    peer = remote or "unix"
    if not (trusted_peer(remote, proxies) if trusted is None else trusted):
        return peer
    return _chain_client(tuple(forwarded_for), peer, tuple(proxies))


@functools.lru_cache(maxsize=4096)
def _chain_client(forwarded_for: tuple[str, ...], peer: str, proxies: tuple[str, ...]) -> str:
    """client_address behind a trusted proxy, once per (chain, peer, proxies): a front sends few
    distinct chains (nginx sets one address), and only trusted peers' chains reach this cache."""
    chain = [a.strip() for value in forwarded_for for a in value.split(",") if a.strip()]
    for address in reversed(chain):
        try:
            ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return peer  # garbage in the chain: only the connection is known
        if not trusted_peer(address, proxies):
            return address
    return chain[0] if chain else peer


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


def public_scheme(request: web.Request, proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES) -> str:
    """The scheme the browser used: the front's X-Forwarded-Proto when the peer is a trusted proxy."""
    if trusted_peer(request.remote, proxies):
        forwarded = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        if forwarded in ("http", "https"):
            return forwarded
    return request.scheme


def launch_location(request: web.Request, instance_domain: str | None, instance_id: str, deep_link: str,
                    proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES) -> str:
    """Where `/launch/<app>` sends the browser: the instance's prefix, on its own origin if configured."""
    if instance_domain is None:
        return instance_prefix(instance_id) + deep_link.lstrip("/")
    return instance_url(public_scheme(request, proxies), instance_domain, instance_id, deep_link)


# ---- the middleware: every response's origin rules in one place ----

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
INSTANCE_PATH = "/i/"


def id_in_path(path: str) -> str | None:
    """The instance id of a `/i/<id>/...` path, if it is one."""
    if not path.startswith(INSTANCE_PATH):
        return None
    candidate = path[len(INSTANCE_PATH):].split("/", 1)[0]
    return candidate if valid_id(candidate) else None


def origin_guard(instance_domain: str | None, not_found: Callable[[web.Request], web.StreamResponse],
                 proxies: Callable[[], Sequence[str]] = lambda: DEFAULT_TRUSTED_PROXIES) -> Middleware:
    """Subdomain mode: an instance host serves only its own `/i/<id>/`; the main host serves no `/i/`.

    `/i/<id>/...` asked on the main host (an old link) is redirected to the instance's host for
    GET and HEAD. Path mode lets every request through. `proxies` is read per request (a reload
    changes it).
    """

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if instance_domain is None:
            return await handler(request)
        label = label_of(request.host, instance_domain)
        instance_id = id_in_path(request.rel_url.raw_path)
        if label is not None:
            if instance_id is None or host_label(instance_id) != label:
                return not_found(request)
            return await handler(request)
        if request.rel_url.raw_path.startswith(INSTANCE_PATH):
            if instance_id is not None and request.method in ("GET", "HEAD"):
                tail = request.rel_url.raw_path[len(instance_prefix(instance_id)):]
                query = request.rel_url.raw_query_string
                location = instance_url(public_scheme(request, proxies()), instance_domain, instance_id, tail)
                raise web.HTTPTemporaryRedirect(location + (f"?{query}" if query else ""),
                                                headers={"Referrer-Policy": "no-referrer"})
            return not_found(request)
        return await handler(request)

    return guard
