"""Test namespaces and their registry: pure, so unit tests may use them without Docker or NATS."""

from __future__ import annotations

import random
import string

_NAMESPACES: set[str] = set()


def random_namespace(prefix: str = "t") -> str:
    return prefix + "".join(random.choices(string.ascii_lowercase, k=6))


def register_namespace(name: str) -> str:
    """Remember a namespace, so the leftover check at the end of the session looks for its services."""
    _NAMESPACES.add(name)
    return name


def take_namespaces() -> list[str]:
    """Every namespace registered and not yet checked; each is handed out once."""
    taken = sorted(_NAMESPACES)
    _NAMESPACES.clear()
    return taken
