"""Who may do what on the bus: the NATS users of swarmpool (one per role), their subject
permissions for a namespace, and how a process logs in as one (a credentials file).

Three roles: ``gateway`` (publish claims, releases, queue heartbeats, activity and visits, receive its replies,
read instance records and the queues), ``functions`` (what the handlers need; the only role that creates buckets and
streams or writes KV), ``operator`` (admin verbs, the event log, reading records). The
``$JS.*`` and ``$KV.*`` patterns below are NATS' own JetStream API subjects, named here
only to grant them; swarmpool's subjects come from ``Subjects``.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from swarmpool.bus.subjects import Subjects
from swarmpool.files import write_private

ROLES = ("functions", "gateway", "operator")


@dataclass(frozen=True)
class Permissions:
    """One role's allow lists (everything else is denied by the server)."""

    publish: list[str]
    subscribe: list[str]
    allow_responses: bool = False  # may answer the requests it receives (claims, admin verbs)

    def merged(self, other: "Permissions") -> "Permissions":
        return Permissions(_unique(self.publish + other.publish), _unique(self.subscribe + other.subscribe),
                           self.allow_responses or other.allow_responses)


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def kv_stream(bucket: str) -> str:
    """The stream behind a KV bucket."""
    return f"KV_{bucket}"


def _read_stream(stream: str) -> list[str]:
    """JetStream API calls that read one stream: info, (ordered) consumers, direct and message gets,
    flow-control replies; no writes, no purge, no deletion of the stream."""
    api = "$JS.API"
    return [f"{api}.STREAM.INFO.{stream}", f"{api}.STREAM.MSG.GET.{stream}",
            f"{api}.DIRECT.GET.{stream}", f"{api}.DIRECT.GET.{stream}.>",
            f"{api}.CONSUMER.CREATE.{stream}", f"{api}.CONSUMER.CREATE.{stream}.>",
            f"{api}.CONSUMER.INFO.{stream}.>", f"{api}.CONSUMER.DELETE.{stream}.>",
            f"$JS.FC.{stream}.>"]


def _consume_stream(stream: str) -> list[str]:
    """Beyond reading: list consumers, pull from them and acknowledge (what the `nats` CLI does)."""
    api = "$JS.API"
    return [f"{api}.CONSUMER.NAMES.{stream}", f"{api}.CONSUMER.LIST.{stream}",
            f"{api}.CONSUMER.MSG.NEXT.{stream}.>", f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
            f"$JS.ACK.{stream}.>"]


def _own_stream(stream: str) -> list[str]:
    """Create (idempotently) and use one stream: the functions role only."""
    return [f"$JS.API.STREAM.CREATE.{stream}"] + _read_stream(stream) + _consume_stream(stream)


def _discovery(service: str) -> list[str]:
    """NATS service discovery of one micro service: ``$SRV.PING|INFO|STATS``, by kind and by id."""
    return [f"$SRV.{verb}{tail}" for verb in ("PING", "INFO", "STATS")
            for tail in ("", f".{service}", f".{service}.*")]


def permissions(role: str, namespace: str) -> Permissions:
    """The allow lists of `role` for one namespace."""
    s = Subjects(namespace)
    buckets = [s.instances_bucket, s.config_bucket, s.leases_bucket, s.queue_bucket]
    if role == "functions":
        publish = [s.instance_events_all(), s.docker_all(), s.tick_all(), s.audit_all()]
        for bucket in buckets:
            publish += _own_stream(kv_stream(bucket)) + [f"$KV.{bucket}.>"]
        # the event log's limits change with versions: its stream is updated in place
        publish += _own_stream(s.events_stream) + [f"$JS.API.STREAM.UPDATE.{s.events_stream}", "$JS.API.INFO"]
        subscribe = [s.claim_all(), s.release_all(), s.queue_seen_all(), s.activity_all(), s.settled_all(), s.docker_all(), s.tick_all(),
                     s.admin_all(), s.instance_events_all()] + _discovery(s.admin_service)
        return Permissions(publish, subscribe + [s.inbox(role) + ".>"], allow_responses=True)
    if role == "gateway":
        # visits: into the event log by a plain publish (the stream stores it; no JetStream API needed)
        publish = [s.claim_all(), s.release_all(), s.queue_seen_all(), s.activity_all(), s.settled_all(),
                   s.visits_all()]
        publish += _read_stream(kv_stream(s.instances_bucket))
        publish += _read_stream(kv_stream(s.queue_bucket))  # positions on the waiting pages; tickets are the functions'

        publish += _read_stream(kv_stream(s.config_bucket))  # the catalogue every host follows (reload)
        return Permissions(publish, [s.inbox(role) + ".>"])
    if role == "operator":
        publish = [s.admin_all(), "$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
        publish += _discovery(s.admin_service)
        for stream in (s.events_stream, kv_stream(s.instances_bucket), kv_stream(s.config_bucket)):
            publish += _read_stream(stream) + _consume_stream(stream)
        return Permissions(publish, [s.instance_events_all(), s.audit_all(), s.visits_all(), s.inbox(role) + ".>"])
    raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def user_name(role: str) -> str:
    return f"swarmpool-{role}"


def server_users(passwords: dict[str, str], namespaces: list[str]) -> list[dict[str, Any]]:
    """The ``authorization.users`` of a nats-server configuration: one user per role, allowed what
    its role needs in every namespace the server serves."""
    users = []
    for role, password in passwords.items():
        perms = permissions(role, namespaces[0])
        for ns in namespaces[1:]:
            perms = perms.merged(permissions(role, ns))
        entry: dict[str, Any] = {"user": user_name(role), "password": password,
                                 "permissions": {"publish": {"allow": perms.publish},
                                                 "subscribe": {"allow": perms.subscribe}}}
        if perms.allow_responses:
            entry["permissions"]["allow_responses"] = True
        users.append(entry)
    return users


@dataclass(frozen=True)
class Access:
    """How one process logs in to NATS: user/password or a `.creds` file, and TLS files.

    Stored as a `nats` CLI context file (JSON: url, user, password, creds, ca, cert, key,
    inbox_prefix), so the operator's file works with ``nats --context`` as it is.
    """

    user: str | None = None
    password: str | None = None
    creds: str | None = None  # a NATS .creds file (JWT mode), instead of user/password
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    url: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Access":
        """Read a credentials file (a `nats` context JSON, or a `.creds` file); a bad one is a ValueError."""
        path = Path(path).expanduser()
        try:
            text = path.read_text()
        except OSError as err:
            raise ValueError(f"cannot read credentials {path}: {err.strerror}") from None
        if "BEGIN NATS USER JWT" in text:
            return cls(creds=str(path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"credentials {path}: not JSON ({err})") from None
        if not isinstance(data, dict):
            raise ValueError(f"credentials {path}: expected a JSON object")
        known = {k: data.get(k) or None for k in ("user", "password", "creds", "ca", "cert", "key", "url")}
        for k, v in known.items():
            if v is not None and not isinstance(v, str):
                raise ValueError(f"credentials {path}: {k} must be a string")
        return cls(**known)

    def save(self, path: Path, inbox_prefix: str, description: str) -> None:
        """Write as a `nats` context file, readable by its owner only (mode 0600)."""
        data = {"description": description, "url": self.url or "", "user": self.user or "",
                "password": self.password or "", "creds": self.creds or "", "ca": self.ca or "",
                "cert": self.cert or "", "key": self.key or "", "inbox_prefix": inbox_prefix}
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_private(path, json.dumps(data, indent=2) + "\n")

    def tls_context(self, url: str) -> ssl.SSLContext | None:
        """A client TLS context when the URL is ``tls://`` or TLS files are given, else None."""
        if not (url.startswith("tls://") or self.ca or self.cert):
            return None
        context = ssl.create_default_context(cafile=self.ca)
        if self.cert:
            context.load_cert_chain(self.cert, self.key)
        return context

    def options(self, url: str) -> dict[str, Any]:
        """Keyword arguments for ``nats.connect``."""
        options: dict[str, Any] = {}
        if self.creds:
            options["user_credentials"] = self.creds
        elif self.user:
            options["user"] = self.user
            options["password"] = self.password or ""
        tls = self.tls_context(url)
        if tls is not None:
            options["tls"] = tls
        return options


def credentials_path(state_dir: str | Path, role: str) -> Path:
    """Where the embedded server keeps the credentials of one role."""
    return Path(state_dir).expanduser() / "credentials" / f"{role}.json"
