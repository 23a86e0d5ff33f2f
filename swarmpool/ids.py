"""Instance ids: the capability to reach a session. Their format, their URL prefix, their log-safe form.

An id is 128 random bits in lowercase base32 (26 characters): unguessable. Whoever knows it reaches
the instance, so it never appears in logs (only `short_id`), metrics labels or public pages, nor in
anything another instance can see: service names carry a handle of independent random bits instead.
"""

from __future__ import annotations

import base64
import re
import secrets

INSTANCE_ID = re.compile(r"[a-z2-7]{26}")
SHORT = 4  # characters of an id that logs may show


def new_instance_id() -> str:
    """128 random bits, lowercase base32 (26 chars): a capability and a valid service name part."""
    return base64.b32encode(secrets.token_bytes(16)).decode().rstrip("=").lower()


def new_handle() -> str:
    """80 random bits, lowercase base32 (16 chars), drawn apart from the id: the part of an instance's service
    name that its neighbours can see (in DNS), so nothing about the id can be learnt from it."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def valid_id(instance_id: str) -> bool:
    """Cheap format check before any lookup: 26 chars of lowercase base32."""
    return len(instance_id) == 26 and INSTANCE_ID.fullmatch(instance_id) is not None


def short_id(app: str, instance_id: str) -> str:
    """Log-safe name of an instance: its app and the first few characters of its id."""
    return f"{app}.{instance_id[:SHORT]}"


def instance_prefix(instance_id: str) -> str:
    """The URL path under which an instance is served: ``/i/<id>/`` (the gateway routes it)."""
    return f"/i/{instance_id}/"
