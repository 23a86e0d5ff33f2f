"""Test namespaces and their registry, and waiting on a condition: pure, so unit tests may use them without
Docker or NATS."""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

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


async def wait_for(probe: Callable[[], T | None | Awaitable[T | None]], *, timeout: float = 60.0,
                   what: str = "condition", interval: float = 0.05) -> T:
    """Poll `probe` (plain or async) until it returns something truthy, or fail after `timeout`, saying what was
    awaited; the one wait of the tests (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if asyncio.iscoroutine(last) or isinstance(last, asyncio.Future):
            last = await last
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
