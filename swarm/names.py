"""How swarmpool names what it makes on the engine: namespaces, instance services, instance bridges and networks."""

from __future__ import annotations

import re

from swarmpool.swarm.model import EGRESS_NONE

NAMESPACE = re.compile(r"^[a-z][a-z0-9]{0,10}$")  # no '-': service names split unambiguously
NAME_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")
MAX_SERVICE_NAME = 63
GENERATIONS = "0123456789abcdefghijklmnopqrstuvwxyz"  # of a namespace's instance bridge (see networks.Bridges)


def service_name(namespace: str, app: str, handle: str) -> str:
    """The swarm service name of an instance: <namespace>-<app>-<handle>. Every instance on its network reads
    it in DNS (reverse lookups, task names), so it holds the random handle, never the id (the capability)."""
    return f"{namespace}-{app}-{handle}"


def bridge_name(namespace: str, generation: str = "+", egress: str = EGRESS_NONE) -> str:
    """The Linux interface of a namespace's instance bridge of one egress class and generation (at most 15
    characters); by default the packet filter's pattern for all generations ('.' and '-' are in no namespace,
    so the patterns of two namespaces or two classes never overlap)."""
    return f"sp{namespace}{'.' if egress == EGRESS_NONE else '-'}{generation}"


def instance_network_name(namespace: str, generation: str = "0", egress: str = EGRESS_NONE) -> str:
    """The swarm-scoped bridge network that published instances of a namespace and egress class join."""
    base = f"{namespace}-instances" if egress == EGRESS_NONE else f"{namespace}-{egress}"
    return base + ("" if generation == "0" else f"-{generation}")
