"""The in-memory route table: instance id -> endpoint, holding only claimed instances."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from swarmpool.bus.messages import Instance
from swarmpool.bus.spec import Catalogue

log = logging.getLogger(__name__)

RETIRED_MEMORY = 4096  # recently ended ids remembered for a helpful "start a new one" link

# a route never goes back to these; seeing one for a routed id means the mirror lags a claim reply
_STALE_STATES = frozenset({"starting", "ready"})


@dataclass(frozen=True, slots=True)
class Route:
    """Where one claimed instance is reached."""

    app: str
    endpoint: str  # host:port
    strip_prefix: bool = False
    image: str = ""  # image id ("" until the KV mirror tells): keys the shared static cache


class RouteTable:
    """Routes of claimed instances, fed by the KV mirror and by claim replies."""

    def __init__(self, catalogue: Catalogue) -> None:
        self._catalogue = catalogue
        self._routes: dict[str, Route] = {}
        self._ended: OrderedDict[str, str] = OrderedDict()  # id -> app, bounded
        self._removed_listeners: list[Callable[[str], None]] = []

    def use(self, catalogue: Catalogue) -> None:
        """A reloaded catalogue: new routes follow it (a removed app's sessions keep their routes)."""
        self._catalogue = catalogue

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, instance_id: object) -> bool:
        return instance_id in self._routes

    def get(self, instance_id: str) -> Route | None:
        return self._routes.get(instance_id)

    def ended_app(self, instance_id: str) -> str | None:
        """The app of a recently ended instance, if this gateway remembers it."""
        return self._ended.get(instance_id)

    def on_removed(self, listener: Callable[[str], None]) -> None:
        """Call `listener(id)` whenever a route disappears."""
        self._removed_listeners.append(listener)

    def _route_for(self, app: str, endpoint: str, image: str = "") -> Route:
        spec = self._catalogue.apps.get(app)
        return Route(app=app, endpoint=endpoint, strip_prefix=spec.strip_prefix if spec else False, image=image)

    def add_claimed(self, instance_id: str, app: str, endpoint: str) -> None:
        """Route a fresh claim at once, so the browser's next request never races the KV watch."""
        self._routes[instance_id] = self._route_for(app, endpoint)
        self._ended.pop(instance_id, None)

    def fill(self, instances: list[Instance]) -> None:
        """Initial load from the mirror."""
        for instance in instances:
            self.on_change(None, instance)

    def on_change(self, old: Instance | None, new: Instance | None) -> None:
        """Listener for `InstanceStore.on_change`: keep exactly the claimed instances routable."""
        if new is not None and new.state == "claimed" and new.endpoint:
            route = self._route_for(new.app, new.endpoint, new.image)
            if self._routes.get(new.id) != route:
                self._routes[new.id] = route
                log.debug("route %s added", new.short)
            return
        gone = new if new is not None else old
        if gone is None:
            return
        if new is not None and new.state in _STALE_STATES:
            return  # never a step back from claimed: the mirror is behind a claim reply
        if self._routes.pop(gone.id, None) is not None:
            log.info("route %s removed (%s)", gone.short, new.state if new else "deleted")
            self._remember_ended(gone.id, gone.app)
            for listener in self._removed_listeners:
                listener(gone.id)
        elif gone.claimed_at is not None:
            self._remember_ended(gone.id, gone.app)

    def _remember_ended(self, instance_id: str, app: str) -> None:
        self._ended[instance_id] = app
        self._ended.move_to_end(instance_id)
        while len(self._ended) > RETIRED_MEMORY:
            self._ended.popitem(last=False)
