"""What the swarm adapter takes and hands out: labels, errors and value types (imports nothing of docker)."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import msgspec

LABEL_OWNER = "swarmpool.owner"
LABEL_APP = "swarmpool.app"
LABEL_ID = "swarmpool.id"  # labels are the engine's: no container sees them (names and DNS it does)
LABEL_HANDLE = "swarmpool.handle"  # the random part of the service name (not derived from the id)
LABEL_IMAGE = "swarmpool.image"  # the image as the catalogue names it (the service may run it by id)
LABEL_PORT = "swarmpool.port"  # container port, for "<service name>:<port>" endpoints on a network
# on a guarded instance (cluster): the port the guard redirects to LABEL_PORT once its rules are in (swarm/guard.py)
LABEL_GUARD_PORT = "swarmpool.guard-port"
GUARD_PORT = 1  # tcpmux, unused: nothing answers on it until `swarmpool guard` has closed the instance in

LABEL_OWNER_LEASE = "swarmpool.owner-lease"  # on the config object that says which copy owns a namespace
LABEL_LEASE_HOLDER = "swarmpool.lease.holder"
LABEL_LEASE_RENEWED = "swarmpool.lease.renewed"
LABEL_SWARM_SERVICE_ID = "com.docker.swarm.service.id"

EGRESS_NONE = "none"  # no new connection out of the instance at all (the packet filter's default)
EGRESS_INTERNET = "internet"  # public addresses only: never the host, private ranges or other instances
EGRESS_CLASSES = (EGRESS_NONE, EGRESS_INTERNET)
ENGINE_FAULT = "engine unavailable"  # starts in a failure's reason when the engine, not the app, failed


class SwarmError(Exception):
    """The engine refused or failed an operation on our services."""


class SwarmUnavailable(SwarmError):
    """The Docker engine cannot be reached (or is not a swarm manager)."""


class InstanceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one instance service runs."""

    app: str
    id: str
    handle: str = ""  # names the service; "" draws a new one (never the id: neighbours see names in DNS)
    image: str
    port: int  # container port
    command: list[str] | None = None
    env: dict[str, str] = {}
    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None  # processes and threads together
    user: str | None = None  # None: the image's user, or services.INSTANCE_UID when that is root
    trusted_user: bool = False  # the app trusts `user`: it may run as root (else its creation is refused)
    cap_add: list[str] = []  # all other capabilities are dropped
    constraints: list[str] = []
    publish: bool = True  # host-mode port on 127.0.0.1 (local, on the namespace's bridge); False: by name on `network`
    network: str | None = None
    egress: str = EGRESS_NONE  # which bridge a published instance joins: none (closed) or internet (public only)
    dns: list[str] = []  # nameservers Docker's embedded DNS forwards outside names to; []: the host's
    # reached only through GUARD_PORT, which `swarmpool guard` opens after its rules (unpublished instances only)
    guard: bool = False


class ServiceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One of our services, as listed by label."""

    service_id: str
    name: str
    app: str
    id: str  # from its label, never from its name
    created_at: float  # unix seconds
    handle: str = ""  # from its label ("" for a service an older version named after its id)


class TaskStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where the single task of an instance service is."""

    state: str  # docker task state, or "missing" when the service is gone
    endpoint: str = ""  # "127.0.0.1:<port>" (published) or "<service name>:<port>" (network)
    exit_code: int | None = None
    error: str = ""
    container_id: str = ""
    node: str = ""  # swarm node id the task is placed on ("" before it is scheduled)
    created_at: float = 0.0  # when the swarm created the task (its CreatedAt; 0: not known)
    running_at: float | None = None  # when its node's engine reported it running (Status.Timestamp while running)


class EngineEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A Docker engine event about one of our containers or services."""

    type: str  # "container" or "service"
    action: str  # die, oom, kill, stop (container); remove (service)
    at: float  # unix seconds
    app: str
    id: str  # from the container's labels; "" for a service event (those carry only the name: map service_id)
    service_id: str = ""
    container_id: str = ""
    exit_code: int | None = None


def parse_timestamp(value: str) -> float:
    """Unix seconds from Docker's RFC 3339 time with nanoseconds ("2024-05-01T12:00:00.123456789Z")."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        return 0.0
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.replace(tzinfo=base.tzinfo or timezone.utc).timestamp() + float("0." + (m.group(2) or "0"))
