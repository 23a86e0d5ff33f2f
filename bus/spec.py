"""The app spec: what the catalogue says about one app, shared by every part over the bus."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

import msgspec

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


class Duration(float):
    """Seconds (finite, >= 0); the catalogue also accepts strings like "90s", "10m", "4h"."""


class Interval(Duration):
    """A duration that must be more than 0: how often something happens, how long it may take."""


class ByteSize(int):
    """Bytes; the catalogue also accepts strings like "512m", "2g", "1.5GiB"."""


class MemorySize(ByteSize):
    """A memory limit: at least MIN_MEMORY (less is a typo, like "0.5" read as 0 bytes, or no limit)."""


class NameServer(str):
    """An IP address of a DNS server ("192.0.2.53", "2001:db8::53"), not a name."""


class TimeZone(str):
    """An IANA time zone name ("Europe/Berlin"), checked against the zone data shipped with the package."""


def parse_time_zone(value: object) -> TimeZone:
    import zoneinfo

    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a time zone name like 'Europe/Berlin' or 'UTC', got {value!r}")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (expected an IANA name like 'Europe/Berlin')") from None
    return TimeZone(value)


class ProxyNetwork(str):
    """An address or CIDR ("127.0.0.1", "10.1.0.0/16", "::1"), normalised ("127.0.0.1/32")."""


def parse_proxy_network(value: object) -> ProxyNetwork:
    import ipaddress

    if not isinstance(value, str):
        raise ValueError(f"expected an address or CIDR like '127.0.0.1' or '10.1.0.0/16', got {value!r}")
    try:
        network = ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected an address or CIDR like '127.0.0.1' or '10.1.0.0/16', got {value!r}") from None
    if network.prefixlen == 0:
        raise ValueError(f"{value!r} trusts every address as a proxy: any client could forge its address and "
                         "scheme; list the front's own addresses")
    return ProxyNetwork(str(network))


class FrameAncestor(str):
    """A source allowed to frame an app (CSP `frame-ancestors`): an origin "https://lms.example.org[:port]",
    optionally "https://*.example.org" or port ":*", or 'self' / 'none'; normalised to lowercase."""


_FRAME_ORIGIN = re.compile(
    r"^(https?)://(\*\.)?([a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*|\[[0-9a-f:.]+\])"
    r"(:(\*|[0-9]{1,5}))?/?$")
_FRAME_EXAMPLE = "an origin like 'https://moodle.example.org' (scheme://host[:port], no path), \"'self'\" or \"'none'\""


def parse_frame_ancestor(value: object) -> FrameAncestor:
    if not isinstance(value, str):
        raise ValueError(f"expected {_FRAME_EXAMPLE}, got {value!r}")
    text = value.strip().lower()
    if text in ("'self'", "'none'"):
        return FrameAncestor(text)
    if text in ("self", "none"):
        raise ValueError(f"expected \"'{text}'\" with its single quotes (as CSP writes it), got {value!r}")
    if text == "*" or re.fullmatch(r"[a-z][a-z0-9+.-]*:(//\*?)?", text):
        raise ValueError(f"expected {_FRAME_EXAMPLE}, got {value!r}: it would let any site frame the app "
                         "and start sessions in it")
    match = _FRAME_ORIGIN.match(text)
    if match is None:
        raise ValueError(f"expected {_FRAME_EXAMPLE}, got {value!r}")
    port = match.group(8)
    if port is not None and port != "*" and not 1 <= int(port) <= 65535:
        raise ValueError(f"expected a port from 1 to 65535 in {value!r}")
    return FrameAncestor(text.rstrip("/"))


MIN_MEMORY = 32 * 1024**2


def parse_name_server(value: object) -> NameServer:
    import ipaddress

    try:
        return NameServer(str(ipaddress.ip_address(value if isinstance(value, str) else "")))
    except ValueError:
        raise ValueError(f"expected the IP address of a DNS server, got {value!r}") from None


def parse_duration(value: object) -> Duration:
    """Seconds from a number or a string like "90s", "10m", "4h"."""
    if isinstance(value, bool):
        raise ValueError("expected a duration: seconds or a string like '90s', '10m', '4h'")
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"a duration must be a finite number of seconds, got {value!r}")
        if value < 0:
            raise ValueError("a duration must not be negative")
        return Duration(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return Duration(float(m.group(1)) * _UNITS[m.group(2)])
    raise ValueError(f"expected a duration: seconds or a string like '90s', '10m', '4h', got {value!r}")


def parse_size(value: object) -> ByteSize:
    """Bytes from a number or a string like "512m", "2g"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return ByteSize(value)
    if isinstance(value, str) and (m := _SIZE.match(value)):
        unit = (m.group(2) or "").lower()[:1]
        return ByteSize(int(float(m.group(1)) * _SIZE_UNITS[unit]))
    raise ValueError(f"expected a memory size: bytes or a string like '512m', '2g', got {value!r}")


def dec_hook(type_: type, obj: Any) -> Any:
    """msgspec decode hook for the custom scalar types above."""
    if type_ is Duration:
        return parse_duration(obj)
    if type_ is Interval:
        seconds = parse_duration(obj)
        if seconds <= 0:
            raise ValueError(f"expected a duration of more than 0 s, got {obj!r}")
        return Interval(seconds)
    if type_ is ByteSize:
        return parse_size(obj)
    if type_ is TimeZone:
        return parse_time_zone(obj)
    if type_ is ProxyNetwork:
        return parse_proxy_network(obj)
    if type_ is FrameAncestor:
        return parse_frame_ancestor(obj)
    if type_ is NameServer:
        return parse_name_server(obj)
    if type_ is MemorySize:
        size = parse_size(obj)
        if size < MIN_MEMORY:
            raise ValueError(f"expected a memory size of at least 32m, got {obj!r} ({int(size)} bytes)")
        return MemorySize(size)
    raise NotImplementedError(f"no decoder for {type_}")


def enc_hook(obj: Any) -> Any:
    """msgspec encode hook: the custom scalars travel as plain numbers."""
    if isinstance(obj, Duration):
        return float(obj)
    if isinstance(obj, ByteSize):
        return int(obj)
    if isinstance(obj, str):  # TimeZone, ProxyNetwork, FrameAncestor
        return str(obj)
    raise NotImplementedError(f"cannot encode {type(obj)}")


AppName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,23}$")]
Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
UserName = Annotated[str, msgspec.Meta(pattern=r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})(:([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10}))?$")]
Capability = Annotated[str, msgspec.Meta(pattern=r"^(CAP_)?[A-Z_]{2,32}$")]  # e.g. "NET_BIND_SERVICE"
# a folder below the instance prefix, e.g. "voila/static/", or a pattern of files where `*` and `?` stand for
# any characters but "/", e.g. "editor.*.js" (no leading slash, no "." or ".." parts)
StaticPath = Annotated[str, msgspec.Meta(pattern=r"^(?!\.{1,2}(/|$))(?!.*/\.{1,2}(/|$))[A-Za-z0-9_~.*?-]+(/[A-Za-z0-9_~.*?-]+)*/?$")]


class Probe(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Readiness: an instance is ready only when every given check passes."""

    path: str | None = "/"  # HTTP GET relative to the instance root must answer 2xx
    log_marker: str | None = None  # this text must have appeared in the container log
    timeout: Interval = Interval(120)  # from creation; past it the instance has failed
    interval: Interval = Interval(0.25)


class Pool(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How many instances to keep warm."""

    size: Annotated[int, msgspec.Meta(ge=0)] = 1  # ready instances to keep
    max: Annotated[int, msgspec.Meta(ge=0)] | None = None  # ready + starting + claimed; default size * 3
    max_warm_age: Interval | None = None  # recycle ready instances older than this
    max_parallel_starts: Annotated[int, msgspec.Meta(ge=1)] | None = None  # this app's starts at once; none: the budget's
    # students waiting in the app's queue at most (clicks that found no ready instance); one more gets the
    # "class is full" page (503, Retry-After). None: no cap
    queue_max: Annotated[int, msgspec.Meta(ge=0)] | None = None

    @property
    def limit(self) -> int:
        return self.max if self.max is not None else max(self.size * 3, self.size + 1)


class Session(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """When a claimed instance is retired. None disables a rule."""

    idle_timeout: Interval | None = Interval(600)  # no client traffic for this long
    disconnect_grace: Interval | None = Interval(120)  # no open connection for this long
    max_lifetime: Interval | None = Interval(4 * 3600)  # claimed for this long, whatever happens
    unused_grace: Duration | None = Duration(30)  # claimed, yet no client request ever arrived (bots, scripts)


class Limits(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Resources of one instance."""

    cpus: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    memory: MemorySize = MemorySize(1024**3)
    pids: Annotated[int, msgspec.Meta(ge=32)] = 512  # processes and threads together


# What an instance's own code may open connections to. "none" (the default): nothing at all, neither the
# host (any port), the LAN, private ranges, other instances nor the control plane, and its DNS answers no
# outside name. "internet": public addresses too (and its DNS resolves), still never the host, private or
# reserved ranges, other instances or the control plane. Enforced by the packet filter (swarm/firewall.py).
Egress = Literal["none", "internet"]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ClockTime = Annotated[str, msgspec.Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                                        description="a wall-clock time HH:MM, 00:00 to 23:59")]


class ScheduleEntry(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A class: keep `size` ready from `warm_up` before `start` to `end` on `days`, in `timezone`
    (default: the settings' timezone, else UTC). `end` before `start`: the entry crosses midnight."""

    days: Annotated[list[Weekday], msgspec.Meta(min_length=1)]
    start: ClockTime
    end: ClockTime
    size: Annotated[int, msgspec.Meta(ge=0)]
    timezone: TimeZone | None = None
    warm_up: Duration = Duration(0.0)

    def __post_init__(self) -> None:
        if self.start == self.end:
            raise ValueError(f"end ({self.end}) must differ from start")

    @property
    def label(self) -> str:
        """How status names the entry: "tue,thu 10:00-11:30"."""
        return f"{','.join(self.days)} {self.start}-{self.end}"


class CalendarSource(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A course's lecture calendar (iCalendar, RFC 5545): keep `size` ready from `warm_up` before each event
    to its end. `file` (next to the catalogue) is read where the catalogue is loaded and stored on the bus
    with it; `ics` is the calendar's text itself. Each event's SUMMARY is its lecture's label."""

    file: str | None = None  # an .ics file, relative to the catalogue file's folder
    ics: Annotated[str, msgspec.Meta(max_length=256 * 1024)] | None = None  # or the calendar's text
    size: Annotated[int, msgspec.Meta(ge=0)]
    warm_up: Duration = Duration(0.0)
    match: str | None = None  # only events whose SUMMARY contains this text (any case)
    timezone: TimeZone | None = None  # of floating times and all-day events (default: the settings', else UTC)


class AppSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One app of the catalogue."""

    name: AppName = ""  # filled from the catalogue key
    title: str = ""
    description: str = ""
    image: str
    build: str | None = None  # shell command (run in the catalogue's folder) that builds `image`
    port: Port
    command: list[str] | None = None  # "{prefix}" in any item becomes /i/<id>/
    env: dict[str, str] = {}
    prefix_env: str | None = None  # extra env var that also receives the prefix
    deep_link: str = ""  # path after the prefix where the student lands
    strip_prefix: bool = False  # gateway removes /i/<id> before forwarding
    constraints: list[str] = []  # swarm placement constraints
    probe: Probe = Probe()
    pool: Pool = Pool()
    session: Session = Session()
    limits: Limits = Limits()
    user: UserName | None = None  # run as this user ("uid[:gid]" or a name); default: the image's, never root
    cap_add: list[Capability] = []  # every capability is dropped except these
    schedule: list[ScheduleEntry] = []  # classes: larger pools at set times (see functions/schedule.py)
    calendar: list[CalendarSource] = []  # classes from lecture calendars (.ics): larger pools during their events
    # paths below the prefix whose GET 200s are the same in every instance of the image: the gateway
    # serves them from one shared, compressed copy (never list a path whose answer depends on the user)
    static_paths: list[StaticPath] = []
    # a claim's replacement starts once the student's page has loaded ("page"), and for apps whose page
    # then opens a WebSocket (a kernel), once that opened too ("websocket"); settings.settle_cap bounds it
    settle_on: Literal["page", "websocket"] = "page"
    # the sites that may show the app in a frame (a course page): the gateway sends them as CSP
    # `frame-ancestors` on the app's pages and the instance's responses, and a launch inside a frame
    # claims only when the framing page is one of them; empty: 'self' (no other site frames it)
    frame_ancestors: tuple[FrameAncestor, ...] = ()
    # the unsafe settings this app is allowed, each named (see swarmpool/guardrails.py): root as `user`,
    # capabilities beyond the safe list in `cap_add`; a trust the app does not use is refused too
    trusted: list[Literal["user", "cap_add"]] = []
    egress: Egress = "none"  # what the instance's code may connect to: nothing, or the public internet (see Egress)
    # claims only with a lecture link (`swarmpool link`): a signed, expiring URL, optionally with a claim
    # budget; /launch/<app> without a valid one answers 403 or 410 and claims nothing
    require_link: bool = False


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Global settings of one swarmpool."""

    max_instances: Annotated[int, msgspec.Meta(ge=1)] = 200  # global capacity, all apps
    claim_wait: Duration = Duration(2.0)  # a click waits this long for a ready instance (gateways without the queue)
    # a waiting student keeps their place in the queue while their page holds its connection or refreshes
    # within this long; then the ticket lapses and the next in line moves up
    queue_window: Interval = Interval(20.0)
    heartbeat_interval: Interval = Interval(5.0)  # gateway throttles activity per instance
    reconcile_interval: Interval = Interval(5.0)  # keeper's full reconcile period (swarm vs records)
    tick_interval: Interval = Interval(1.0)  # reaper and prober backstop period
    # after a claim, wait this long before refilling: batches a burst's refills, and keeps a new
    # container's start from competing for the CPU with the student's first page load
    refill_delay: Duration = Duration(2.0)
    settle_cap: Duration = Duration(10.0)  # a claim's refill waits for its page to load, at most this long
    # instances starting at once, all apps; 0: it follows the starts (see docs/starts.md)
    start_budget: Annotated[int, msgspec.Meta(ge=0)] = 0
    start_budget_max: Annotated[int, msgspec.Meta(ge=1)] = 64  # the followed budget's ceiling, per node
    start_tolerance: Annotated[float, msgspec.Meta(ge=1.0)] = 4.0  # starts this much slower than the fastest: narrow
    static_cache_size: ByteSize = ByteSize(256 * 1024**2)  # the gateway's shared static cache, all images
    static_cache_variants: Annotated[int, msgspec.Meta(ge=1)] = 8  # query strings kept per static path
    orphan_grace: Interval = Interval(30.0)  # a service without record (or record without service) this old is cleaned up
    publish_ports: bool = True  # local: host-mode port on 127.0.0.1; cluster: overlay by name
    network: str | None = None  # overlay network instances join (cluster mode)
    # set by `swarmpool deploy`: unpublished instances are reached only through the port `swarmpool guard` opens
    # once it has closed the instance in (no new connection out), so no probe or claim reaches one before
    guard: bool = False
    # live sessions of one app that one browser (the gateway's cookie) may hold; 0: no limit
    per_browser_limit: Annotated[int, msgspec.Meta(ge=0)] = 3
    # gateway bounds: one student's socket or slow client must not cost the others
    ws_max_message: ByteSize = ByteSize(4 * 1024**2)  # larger WebSocket messages close that socket (1009)
    ws_per_instance: Annotated[int, msgspec.Meta(ge=1)] = 16  # open WebSockets per instance
    keepalive_timeout: Duration = Duration(30.0)  # idle client connection, or one still sending headers
    body_timeout: Duration = Duration(60.0)  # a request body that sends nothing for this long is cut
    upstream_read_timeout: Duration = Duration(300.0)  # an instance silent this long mid-HTTP-response
    # per-instance origins: "apps.example.org" serves /i/<id>/ only on <label>.apps.example.org
    # (wildcard DNS and certificate); None keeps one origin and path-based confinement
    instance_domain: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:\d{1,5})?$")] | None = None
    timezone: TimeZone | None = None  # of schedule entries that name none (default: UTC)
    # addresses (or CIDRs) of the proxies in front of the gateway (nginx): only from these are
    # X-Forwarded-For and -Proto believed; anyone else's are replaced by what the connection says.
    # Default loopback: nginx on the same machine. [] when clients on this machine reach the gateway directly
    trusted_proxies: tuple[ProxyNetwork, ...] = (ProxyNetwork("127.0.0.0/8"), ProxyNetwork("::1/128"))
    # the unsafe settings this catalogue is allowed, for every app (see swarmpool/guardrails.py): a `network`
    # other than the stack's instances overlay, `publish_ports = false` without a network
    trusted: list[Literal["network", "publish_ports"]] = []
    # DNS servers (IP addresses) the instances' DNS forwards outside names to: only apps with egress =
    # "internet" reach them. Default: the host's (Docker's choice). Read by the packet filter at `up`.
    egress_dns: list[NameServer] = []
    # what one instance costs per hour (any currency): `swarmpool report` multiplies its instance-hours by it
    cost_per_instance_hour: Annotated[float, msgspec.Meta(ge=0)] | None = None


class Catalogue(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The whole catalogue file."""

    settings: Settings = Settings()
    apps: dict[str, AppSpec] = {}
    # the text of every calendar `file` the apps name (as named there), read where the catalogue was loaded:
    # stored on the bus with the catalogue's text, so every host runs the same calendars (not a TOML section)
    calendars: dict[str, str] = {}
