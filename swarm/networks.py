"""A namespace's instance bridges, one per egress class, and their generations past an engine restart's dead copy."""

from __future__ import annotations

import logging
import re
import threading
import time

import docker.errors

from swarmpool.swarm import raw_api
from swarmpool.swarm.engine import Engine
from swarmpool.swarm.model import EGRESS_CLASSES, EGRESS_NONE, ENGINE_FAULT, LABEL_OWNER, SwarmError
from swarmpool.swarm.names import GENERATIONS, bridge_name, instance_network_name

log = logging.getLogger(__name__)

_NETWORK_TIMEOUT = 20.0  # waiting for the containers to leave the bridge before removing it
_CONFIG_NETWORK_TIMEOUT = 10.0  # then for the bridge's removal to free its config network
_STALE_NETWORK = re.compile(r"^network \S+ exists$|networks have same bridge name")


def stale_network(error: str) -> bool:
    """Whether a task was rejected because this node's engine kept a dead copy of our bridge across its
    restart (moby#38318: "network <id> exists", then "networks have same bridge name")."""
    return bool(_STALE_NETWORK.search(error))


class _Bridge:
    """Where the adapter stands with one egress class's instance bridge."""

    def __init__(self) -> None:
        self.generation = ""  # "": not chosen yet
        self.ready = False  # its networks exist (as far as we know)
        self.stale = False  # a task was rejected by this generation's dead copy: use the next


class Bridges:
    """The instance bridges of one namespace: made on first use, moved on when dead, removed at the end."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._bridges = {egress: _Bridge() for egress in EGRESS_CLASSES}  # one per egress class

    def gone(self, egress: str) -> None:
        """The bridge of `egress` vanished under a create (another process removed it): make it anew."""
        self._bridges[egress].ready = False

    def stale(self, egress: str) -> None:
        """The bridge of `egress` is listed but dead: the next ensure moves to the next generation."""
        self._bridges[egress].stale = True

    def info(self, name: str) -> dict[str, object] | None:
        """The engine's inspection of the network named exactly `name`; None if there is none."""
        found = [n for n in self._engine.client().api.networks(names=[name]) if n.get("Name") == name]
        return dict(found[0]) if found else None

    def ensure(self, egress: str = EGRESS_NONE) -> str:
        """The namespace's instance bridge of one egress class: published ports bind 127.0.0.1 only, no traffic
        between instances; what may leave it is the packet filter's business (swarm/firewall.py), keyed by
        the bridge's interface name, which says the class.

        A swarm-scoped bridge takes driver options only from a node-local "config-only" network.
        An engine restarted while instances ran keeps a dead copy of the bridge that rejects every
        task (moby#38318) and can be removed by no API: once a task says so, the next generation
        (a new network and bridge name; the dead one's config network stays, in use by the copy).
        """
        if egress not in self._bridges:
            raise SwarmError(f"unknown egress class {egress!r} (one of {', '.join(EGRESS_CLASSES)})")
        namespace = self._engine.namespace
        bridge = self._bridges[egress]
        with self._lock:
            if bridge.generation == "":
                bridge.generation = self._first_generation(egress)
            if bridge.stale:
                self._next_generation(egress)
            name = instance_network_name(namespace, bridge.generation, egress)
            if bridge.ready:
                return name
            api = self._engine.client().api
            existing = {n["Name"] for n in api.networks(names=[name, name + "-config"])}
            requests = []
            if name + "-config" not in existing:
                requests.append({
                    "Name": name + "-config", "ConfigOnly": True, "Labels": {LABEL_OWNER: namespace},
                    "Options": {
                        "com.docker.network.bridge.name": bridge_name(namespace, bridge.generation, egress),
                        "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
                        "com.docker.network.bridge.enable_icc": "false",
                    },
                })
            if name not in existing:
                requests.append({"Name": name, "Driver": "bridge", "Scope": "swarm",
                                 "ConfigFrom": {"Network": name + "-config"}})
            for request in requests:
                try:
                    raw_api.create_network(api, request)
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # 409: another host process created it first
                        raise SwarmError(f"cannot create network {request['Name']}: {e.explanation or e}") from e
            bridge.ready = True
            return name

    def _next_generation(self, egress: str) -> None:
        """Move to the next generation (another host may have created it already: it is shared)."""
        namespace = self._engine.namespace
        bridge = self._bridges[egress]
        later = GENERATIONS[GENERATIONS.index(bridge.generation) + 1:]
        if not later:
            raise SwarmError(f"every instance bridge generation of {namespace} is taken; restart dockerd "
                             f"with no instances running, then remove the "
                             f"{instance_network_name(namespace, egress=egress)}* networks")
        log.warning("instance bridge %s was kept dead by an engine restart; using %s",
                    bridge_name(namespace, bridge.generation, egress),
                    bridge_name(namespace, later[0], egress))
        bridge.generation, bridge.stale, bridge.ready = later[0], False, False

    def _first_generation(self, egress: str) -> str:
        """The newest generation whose config network exists (in use by another host, or a dead copy's
        that the first rejected task moves past), else the first."""
        namespace = self._engine.namespace
        ours = {n["Name"] for n in self._engine.client().api.networks(filters={"label": f"{LABEL_OWNER}={namespace}"})}
        found = [g for g in GENERATIONS if instance_network_name(namespace, g, egress) + "-config" in ours]
        return found[-1] if found else GENERATIONS[0]

    def note_task_error(self, error: str) -> str:
        """A task's error, marked as the engine's fault when a dead copy of our bridge rejected it."""
        if not stale_network(error):
            return error
        for bridge in self._bridges.values():  # the error does not say which class: move every one on
            if bridge.generation:
                bridge.stale = True
        return f"{ENGINE_FAULT}: instance bridge kept dead by an engine restart ({error})"

    def remove(self) -> None:
        """Remove the namespace's instance bridges once their containers have left them (if they exist)."""
        api = self._engine.client().api
        deadline = time.monotonic() + _NETWORK_TIMEOUT
        # removing a swarm network while a container still leaves it can leave a dead local copy that
        # rejects the next create ("not found"): wait for the namespace's containers to be gone first
        label = f"{LABEL_OWNER}={self._engine.namespace}"
        while api.containers(all=True, filters={"label": label}) and time.monotonic() < deadline:
            time.sleep(0.2)
        with self._lock:
            for egress, bridge in self._bridges.items():
                bridge.ready = False
                self._remove_networks(egress, deadline)

    def _remove_networks(self, egress: str, deadline: float) -> None:
        """Remove the swarm-scoped bridges of one egress class, then their config-only networks."""
        namespace = self._engine.namespace
        api = self._engine.client().api
        ours = {n["Name"] for n in api.networks(filters={"name": instance_network_name(namespace, egress=egress)})}
        names = [instance_network_name(namespace, g, egress) for g in GENERATIONS]
        for network in [n for n in names if n in ours]:
            while True:
                try:
                    api.remove_network(network)
                    break
                except docker.errors.NotFound:
                    break
                except docker.errors.APIError as e:  # "in use"/"has active endpoints": tasks shutting down
                    if time.monotonic() > deadline:
                        log.warning("could not remove network %s: %s", network, e.explanation or e)
                        break
                    time.sleep(0.2)
        # with hundreds of instances the swarm bridge's removal reaches this engine a while later: until then its
        # config network is in use, so it is retried for a moment (a dead copy of an engine restart keeps it in
        # use for good: moby#38318)
        settle = max(deadline, time.monotonic() + _CONFIG_NETWORK_TIMEOUT)
        for network in [names[0] + "-config"] + [n + "-config" for n in names[1:] if n + "-config" in ours]:
            while True:
                try:
                    api.remove_network(network)
                    break
                except docker.errors.APIError as e:
                    if e.status_code == 404:
                        break
                    if time.monotonic() > settle:
                        log.info("network %s stays: %s", network, e.explanation or e)
                        break
                    time.sleep(0.2)
