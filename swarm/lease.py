"""A namespace's owner lease, kept on the engine: a labelled swarm config changed only by version-checked updates."""

from __future__ import annotations

import time
from typing import Any

import docker.errors

from swarmpool.swarm import raw_api
from swarmpool.swarm.engine import Engine
from swarmpool.swarm.model import (LABEL_LEASE_HOLDER, LABEL_LEASE_RENEWED, LABEL_OWNER_LEASE, SwarmError,
                                   parse_timestamp)


class OwnerLease:
    """Which copy of swarmpool owns one namespace (blocking calls: run them in the engine's pool)."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def claim(self, holder: str, ttl: float) -> str | None:
        """Take the lease; None when we hold it now, else who does. A lease in `holder`'s own name (a copy of
        us that died) or not renewed for `ttl` seconds is taken over."""
        api = self._engine.client().api
        name = self._name()
        labels = {LABEL_OWNER_LEASE: self._engine.namespace, LABEL_LEASE_HOLDER: holder,
                  LABEL_LEASE_RENEWED: f"{time.time():.3f}"}
        try:
            api.create_config(name, b"swarmpool owner lease", labels=labels)
            return None
        except docker.errors.APIError as e:
            if e.status_code != 409:
                raise SwarmError(f"cannot create the owner lease {name}: {e.explanation or e}") from e
        lease = api.inspect_config(name)
        current = (lease.get("Spec") or {}).get("Labels") or {}
        age = self._engine_now() - parse_timestamp(lease.get("UpdatedAt", ""))
        if current.get(LABEL_LEASE_HOLDER) != holder and age <= ttl:
            return f"{current.get(LABEL_LEASE_HOLDER, '?')} (renewed {max(age, 0):.0f} s ago)"
        return None if self._update(lease, labels) else f"{current.get(LABEL_LEASE_HOLDER, '?')} (just now)"

    def renew(self, holder: str) -> bool:
        """Renew our lease; False when it is no longer ours (taken over, or removed)."""
        try:
            lease = self._engine.client().api.inspect_config(self._name())
        except docker.errors.NotFound:
            return False
        labels = (lease.get("Spec") or {}).get("Labels") or {}
        if labels.get(LABEL_LEASE_HOLDER) != holder:
            return False
        return self._update(lease, {**labels, LABEL_LEASE_RENEWED: f"{time.time():.3f}"})

    def release(self, holder: str) -> None:
        """Give the lease back (only if it is still ours)."""
        api = self._engine.client().api
        try:
            lease = api.inspect_config(self._name())
            if ((lease.get("Spec") or {}).get("Labels") or {}).get(LABEL_LEASE_HOLDER) == holder:
                api.remove_config(lease["ID"])
        except docker.errors.NotFound:
            pass

    def _name(self) -> str:
        return f"swarmpool-owner-{self._engine.namespace}"

    def _engine_now(self) -> float:
        """The engine's clock (lease ages compare the manager's times with each other, not ours)."""
        return parse_timestamp(str(self._engine.client().info().get("SystemTime", ""))) or time.time()

    def _update(self, lease: dict[str, Any], labels: dict[str, str]) -> bool:
        """Set the lease's labels unless someone changed it since we read it; whether ours went in."""
        spec = {**(lease.get("Spec") or {}), "Labels": labels}
        return raw_api.update_config(self._engine.client().api, lease["ID"], lease["Version"]["Index"], spec)
