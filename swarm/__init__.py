"""The only package that touches Docker: instance services on a swarm, found by label, watched by events."""

from swarmpool.swarm.adapter import (
    LABEL_APP,
    LABEL_HANDLE,
    LABEL_ID,
    LABEL_IMAGE,
    LABEL_OWNER,
    LABEL_PORT,
    EngineEvent,
    InstanceSpec,
    ServiceInfo,
    Swarm,
    SwarmError,
    SwarmUnavailable,
    TaskStatus,
    service_name,
)
from swarmpool.swarm.firewall import Firewall, FirewallUnavailable
from swarmpool.swarm.port import SwarmPort

__all__ = [
    "LABEL_APP",
    "LABEL_HANDLE",
    "LABEL_ID",
    "LABEL_IMAGE",
    "LABEL_OWNER",
    "LABEL_PORT",
    "EngineEvent",
    "Firewall",
    "FirewallUnavailable",
    "InstanceSpec",
    "ServiceInfo",
    "Swarm",
    "SwarmError",
    "SwarmPort",
    "SwarmUnavailable",
    "TaskStatus",
    "service_name",
]
