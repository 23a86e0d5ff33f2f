"""Every message on the bus and every KV record, declared once as msgspec Structs."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

import msgspec

from swarmpool.ids import short_id

InstanceState = Literal["starting", "ready", "claimed", "retiring", "failed"]
STATES: tuple[InstanceState, ...] = ("starting", "ready", "claimed", "retiring", "failed")


class EventKind(StrEnum):
    """What happened to an instance (the last token of its event subject). A str on the wire, so
    stored events and other versions still decode; checked where events are made."""

    CREATED = "created"
    READY = "ready"
    CLAIMED = "claimed"
    FAILED = "failed"
    RETIRING = "retiring"
    REMOVED = "removed"


class Period(StrEnum):
    """The clock's tick periods (the last token of ``sp.tick.<period>``)."""

    FAST = "fast"  # reaper, prober backstop: settings.tick_interval
    RECONCILE = "reconcile"  # keeper compares services with records: settings.reconcile_interval

# allowed transitions; anything else is a bug and is refused by bus.state
TRANSITIONS: dict[str, frozenset[str]] = {
    "starting": frozenset({"starting", "ready", "failed", "retiring"}),
    "ready": frozenset({"ready", "claimed", "retiring", "failed"}),  # ready -> ready: a field (node) changes
    "claimed": frozenset({"claimed", "retiring"}),
    "failed": frozenset({"retiring"}),
    "retiring": frozenset({"retiring"}),
}


class Instance(msgspec.Struct, frozen=True, kw_only=True):
    """KV record of one instance, key ``<app>.<id>``. Times are UNIX seconds."""

    id: str
    app: str
    state: InstanceState = "starting"
    service_id: str = ""
    endpoint: str = ""  # host:port the gateway and prober reach it on
    created_at: float
    ready_at: float | None = None
    claimed_at: float | None = None
    last_activity: float | None = None  # last client traffic seen by a gateway
    connections: int = 0  # open client connections (WebSockets, streams), all gateways together
    gateway_connections: dict[str, int] = {}  # open connections per gateway (summed into `connections`)
    disconnected_at: float | None = None  # when connections last dropped to 0
    used: bool = False  # any client traffic ever arrived
    reason: str = ""  # why it failed or is retiring
    retiring_at: float | None = None
    heartbeat_at: float | None = None  # time of the newest heartbeat applied, any gateway
    gateway_heartbeats: dict[str, float] = {}  # newest heartbeat time per gateway (its own clock orders it)
    browser: str = ""  # opaque key of the browser that claimed it (a hash of the gateway's cookie)
    image: str = ""  # id of the image it runs (the gateway's static cache is shared per image)
    settled_at: float | None = None  # when its student's page had loaded (a gateway's Settled)
    spec: str = ""  # version of what it runs (image name, command, ...): a reload that changes it recycles
    node: str = ""  # swarm node id its task runs on ("" until reconcile has seen it placed)
    # seconds its node's engine took from creating its task to running it (the task's own timestamps, recorded
    # by reconcile with the node): the start budget judges a node's pace by these, not by any host's clock
    task_start: float | None = None
    # random, independent of the id: its service's name (seen by neighbours in DNS); "" for a service named
    # after its id by an older version (recycled as outdated)
    handle: str = ""

    @property
    def key(self) -> str:
        return f"{self.app}.{self.id}"

    @property
    def short(self) -> str:
        """Log-safe name: the id is a capability, so only a prefix is ever logged."""
        return short_id(self.app, self.id)


# ---- claims (sp.claim.<app>, request/reply) ----


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    wait: float = 2.0  # seconds the claimer may wait for a ready instance
    browser: str = ""  # opaque browser key (hash of the gateway's cookie); "" = not limited per browser
    # the lecture link the click came with (its id; the gateway checked its signature and expiry): the
    # claimer counts the claim against the link's budget; "" = no link (refused if the app requires one)
    link: Annotated[str, msgspec.Meta(pattern=r"^([a-z2-7]{16})?$")] = ""
    # the gateway serves the queue's pages: with no ready instance the claimer answers Queued (a ticket),
    # never waits; False (older gateways): the claim waits `wait`, then ClaimRefused("empty")
    queue: bool = False
    # the student's turn came (their ticket): claim the instance held for it, bound to `browser`
    ticket: Annotated[str, msgspec.Meta(pattern=r"^([a-z2-7]{26})?$")] = ""


class Claimed(msgspec.Struct, frozen=True, kw_only=True, tag="claimed"):
    id: str
    app: str
    endpoint: str
    deep_link: str = ""


class ClaimRefused(msgspec.Struct, frozen=True, kw_only=True, tag="refused"):
    app: str
    # "limit" (the browser holds per_browser_limit sessions) and the link reasons are newer: older
    # gateways cannot decode them (link reasons only come for apps with require_link, new themselves)
    # "full" (the app's queue holds pool.queue_max students) and "ticket" (a ticket that lapsed, or another
    # browser's) come only to gateways that asked for the queue
    reason: Literal["empty", "unknown_app", "paused", "limit", "link_missing", "link_expired", "link_revoked",
                    "link_spent", "full", "ticket"]
    retry_after: float = 3.0
    sessions: list[str] = []  # "limit": ids of that browser's live sessions (its own capabilities)


class Queued(msgspec.Struct, frozen=True, kw_only=True, tag="queued"):
    """No instance for the click now: it holds a place in the app's queue (only to gateways that ask, `queue`)."""

    app: str
    ticket: str  # 128 random bits: the waiting page's URL holds it; served only to the browser it was issued to
    position: int  # 1: next to be served


ClaimReply = Claimed | ClaimRefused | Queued


# ---- the queue: KV records ``<app>.<ticket>`` in the queue bucket, heartbeats on sp.queue.seen.<app> ----

TicketState = Literal["waiting", "turn"]


class Ticket(msgspec.Struct, frozen=True, kw_only=True):
    """One student's place in an app's queue. Its order is `seq`: the bucket's sequence number of its
    creation (0 while unwritten: the record's revision is then that number)."""

    id: str
    app: str
    browser: str  # the browser key it was issued to (a hash of the gateway's cookie): nobody else is served by it
    link: str = ""  # the lecture link it came with (an id): counted when it is served
    at: float  # when it joined (UNIX seconds)
    seq: int = 0
    state: TicketState = "waiting"
    # its browser came to its waiting page (a gateway said so): only then does it hold a place that others
    # wait behind (a click whose page never comes, a client without cookies, lapses unnoticed)
    confirmed: bool = False
    instance: str = ""  # "turn": the ready instance held for it (claimed only when its browser comes)
    turn_at: float | None = None

    @property
    def key(self) -> str:
        return f"{self.app}.{self.id}"


class QueueSeen(msgspec.Struct, frozen=True, kw_only=True):
    """A gateway still holds these tickets' waiting pages (a held connection or a refresh): they keep their place."""

    app: str
    tickets: Annotated[list[Annotated[str, msgspec.Meta(pattern=r"^[a-z2-7]{26}$")]], msgspec.Meta(max_length=4096)]
    at: float
    gateway: str = ""


# ---- releases (sp.release.<app>, request/reply): a browser at its limit ends its sessions ----


class ReleaseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """End every live session of `app` that `browser` holds (the browser asked, on its limit page)."""

    app: str
    browser: str  # opaque browser key (hash of the gateway's cookie); never empty


class Released(msgspec.Struct, frozen=True, kw_only=True, tag="released"):
    app: str
    ended: int  # sessions that began retiring


class ErrorReply(msgspec.Struct, frozen=True, kw_only=True, tag="error"):
    """What the runtime's error boundary answers when a handler fails or a request is malformed."""

    error: str
    detail: str = ""


# ---- settle (sp.settled.<app>.<id>, publish) ----


class Settled(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed instance's page has loaded (and its first WebSocket opened, for apps that use
    one): the keeper may start its replacement without competing with the page load."""

    app: str
    id: str
    at: float
    gateway: str = ""


# ---- activity (sp.activity.<app>.<id>, publish) ----


class Activity(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    id: str
    at: float
    connections: int = 0  # open connections right now, as seen by this gateway
    traffic: bool = False  # client traffic since the last heartbeat
    gateway: str = ""


# ---- instance events (sp.instance.<app>.<id>.<event>, kept in a stream) ----


class InstanceEvent(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    id: str
    event: str  # an EventKind
    state: str
    at: float
    reason: str = ""


# ---- visits (sp.visit.<app>.<kind>, published by gateways, kept in the event stream) ----


class Visit(msgspec.Struct, frozen=True, kw_only=True):
    """A student's click on `/launch/<app>` and what it got, or a claimed session's page having loaded
    (the settle signal): what `swarmpool report` counts. Never an instance id nor a cookie: `session`
    and `browser` are one-way hashes, `link` a lecture link's log-safe prefix."""

    kind: str  # "click" or "page"
    app: str
    at: float
    outcome: str = ""  # click: served, waiting (the waiting room; paused too) or refused
    # refused: link_missing, link_tampered, link_expired, link_revoked, link_spent, limit, frame;
    # waiting: empty, paused, unavailable (no claimer answered), error (a claimer failed)
    cause: str = ""
    session: str = ""  # served click and page: session_key() of the instance id
    browser: str = ""  # browser_tag() of the browser key; "" when the gateway keeps no browser cookie
    link: str = ""  # the lecture link's first characters (short_link), "" without one (its label: KV link.<id>)
    gateway: str = ""


# ---- docker events (sp.docker.<type>.<action>, publish) ----


class DockerEvent(msgspec.Struct, frozen=True, kw_only=True):
    type: str  # container, service
    action: str  # die, oom, kill, destroy, remove, ...
    at: float
    app: str = ""
    id: str = ""  # instance id from our labels
    service_id: str = ""
    container_id: str = ""
    exit_code: int | None = None


# ---- clock (sp.tick.<period>, publish) ----


class Tick(msgspec.Struct, frozen=True, kw_only=True):
    period: str  # a Period
    at: float
    seq: int = 0


# ---- admin (sp.admin.<verb>, a nats.micro service; one request Struct per verb) ----


class Requester(msgspec.Struct, frozen=True, kw_only=True):
    """Who asked, as the CLI reports it (user and host name): self-reported, not verified."""

    user: str = ""
    host: str = ""


AppName = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9-]{0,23}$")]


class AdminCommand(msgspec.Struct, frozen=True, kw_only=True, tag_field="verb"):
    """Base of the verbs' requests (the tag is the verb; the subject says it too, so it may be left out)."""

    by: Requester = Requester()


class StatusRequest(AdminCommand, frozen=True, kw_only=True, tag="status"):
    app: AppName | None = None  # None: every app


class ScaleRequest(AdminCommand, frozen=True, kw_only=True, tag="scale"):
    app: AppName
    size: Annotated[int, msgspec.Meta(ge=0)]
    for_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None  # None: until changed


class PauseRequest(AdminCommand, frozen=True, kw_only=True, tag="pause"):
    app: AppName | None = None
    all: bool = False  # every app (app must then be None)


class ResumeRequest(AdminCommand, frozen=True, kw_only=True, tag="resume"):
    app: AppName | None = None
    all: bool = False


class DrainRequest(AdminCommand, frozen=True, kw_only=True, tag="drain"):
    app: AppName | None = None
    all: bool = False


class RetireRequest(AdminCommand, frozen=True, kw_only=True, tag="retire"):
    id: Annotated[str, msgspec.Meta(pattern=r"^[a-z2-7]{4,26}$")]  # the id or a prefix of it (4+ characters)
    app: AppName | None = None  # narrows the search


class ReloadRequest(AdminCommand, frozen=True, kw_only=True, tag="reload"):
    text: Annotated[str, msgspec.Meta(max_length=512 * 1024)]  # the catalogue file's TOML, as read by the CLI
    source: str = "<catalogue>"  # its path on the operator's machine (named in errors and in status)
    # the calendar files it names (apps.*.calendar.file), read next to it: stored with it on the bus
    calendars: Annotated[dict[str, str], msgspec.Meta(max_length=64)] = {}


class LinkRequest(AdminCommand, frozen=True, kw_only=True, tag="link"):
    app: AppName
    for_seconds: Annotated[float, msgspec.Meta(gt=0, le=366 * 86400)]  # valid this long from now
    max: Annotated[int, msgspec.Meta(ge=1)] | None = None  # claims the link may make, all gateways together
    label: Annotated[str, msgspec.Meta(max_length=80, pattern=r"^[^\x00-\x1f\x7f]*$")] = ""


LinkId = Annotated[str, msgspec.Meta(pattern=r"^[a-z2-7]{4,16}$")]


class LinksRequest(AdminCommand, frozen=True, kw_only=True, tag="links"):
    app: AppName | None = None  # None: every app's links


class RevokeRequest(AdminCommand, frozen=True, kw_only=True, tag="revoke"):
    id: LinkId  # the link's id, or its first 4+ characters


class RotateRequest(AdminCommand, frozen=True, kw_only=True, tag="rotate"):
    retire: bool = False  # also retire the older signing keys: links signed with them stop working


class AppStatus(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    target: int
    target_source: str  # which rule set the target: catalogue, schedule <entry>, scale [until <time>], paused
    paused: bool
    starting: int
    ready: int
    claimed: int
    retiring: int
    failed: int
    claim_seconds: float | None = None  # median of this host's recent claims
    ready_seconds: float | None = None  # median time-to-ready of the live instances
    trusted: list[str] = []  # the unsafe settings the catalogue allows this app: user, cap_add, network, ...
    queued: int = 0  # students waiting in the app's queue


class AdminResult(msgspec.Struct, frozen=True, kw_only=True, tag="ok"):
    """A verb's typed answer: what it did, and where the pools it touched stand now."""

    detail: str = ""
    apps: dict[str, AppStatus] = {}
    link: "LinkInfo | None" = None  # `link`: the new link (its launch path carries the token: shown once)
    links: list["LinkInfo"] = []  # `links`


class AdminEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An operator command, kept in the event log (``sp.audit.<verb>``) beside the instance events."""

    verb: str
    app: str  # "" for every app
    at: float
    reason: str  # what it did ("scale demo to 120 for 3600 s")
    by: Requester = Requester()
    ok: bool = True


# ---- lecture links: KV keys ``link.<id>`` and ``links.keys`` in the config bucket ----


class Link(msgspec.Struct, frozen=True, kw_only=True):
    """One lecture link: what its token may claim, and how many claims it made (CAS on the key)."""

    id: str
    app: str
    expires: float  # UNIX seconds
    max: int | None = None  # claims allowed, all gateways together; None: no budget
    claims: int = 0  # claims made (and claims in flight: a claim that finds no instance gives its count back)
    revoked: bool = False
    label: str = ""
    kid: str = ""  # the signing key its token was signed with
    created_at: float = 0.0
    by: Requester = Requester()


class SigningKey(msgspec.Struct, frozen=True, kw_only=True):
    kid: str  # 8 hex characters, in every token it signs
    secret: str  # 64 hex characters
    created_at: float = 0.0
    retired: bool = False  # its links are no longer valid


class LinkKeys(msgspec.Struct, frozen=True, kw_only=True):
    """The link signing keys: the newest unretired one signs, every unretired one verifies."""

    keys: list[SigningKey] = []


class LinkInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A link as the admin verbs show it (never its token, except `path` right after `link` made it)."""

    id: str
    app: str
    expires: float
    max: int | None = None
    claims: int = 0
    state: str = "valid"  # valid, expired, revoked, spent, key retired
    label: str = ""
    path: str = ""  # "/launch/<app>?l=<token>": only in the answer of `link`


# ---- pool overrides (admin scale/pause/drain), KV key ``pool.<app>`` in the config bucket ----


class PoolOverride(msgspec.Struct, frozen=True, kw_only=True):
    app: str
    size: int | None = None
    paused: bool = False
    until: float | None = None  # `size` holds until then (UNIX seconds); None: until changed


class CatalogueFile(msgspec.Struct, frozen=True, kw_only=True):
    """The loaded catalogue, KV key ``catalogue`` in the config bucket: every host follows it."""

    text: str  # TOML, parsed by every host with the loader of swarmpool.catalogue
    source: str = ""  # the file it was read from (on the machine that loaded it)
    version: str = ""  # a digest of `text` and `calendars`: hosts on the same version run the same catalogue
    at: float = 0.0
    by: Requester = Requester()
    calendars: dict[str, str] = {}  # the calendar files `text` names (apps.*.calendar.file) -> their text


# ---- the engine's trustworthiness, KV key ``engine.trust`` in the config bucket ----


class EngineTrust(msgspec.Struct, frozen=True, kw_only=True):
    """Gaps in what the functions saw of the engine, and how far reconcile has caught up.

    `gap` counts the moments the engine was out of sight (its event stream broke or reconnected,
    swarmpool started); `reconciled` is the last gap after which a full reconcile pass compared
    every record with the engine's tasks. Claims trust the pool only when reconciled >= gap.
    """

    gap: int = 0
    reconciled: int = 0
    reason: str = ""  # why the last gap opened, for logs and status

    @property
    def trusted(self) -> bool:
        """Whether a full reconcile has run since the last gap."""
        return self.reconciled >= self.gap
