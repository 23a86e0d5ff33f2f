"""The control plane as a swarm stack: deploy a compose file, find the managers, remove it all again."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from urllib.parse import urlparse

import docker
import docker.errors

from swarmpool.swarm.engine import connect
from swarmpool.swarm.model import LABEL_OWNER, SwarmError, SwarmUnavailable

LABEL_STACK = "com.docker.stack.namespace"  # what `docker stack deploy` puts on everything it creates


def engine_socket(docker_host: str | None = None) -> str:
    """The path of the engine's unix socket (DOCKER_HOST's, else the default): what function hosts mount."""
    host = docker_host if docker_host is not None else os.environ.get("DOCKER_HOST", "")
    if not host:
        return "/var/run/docker.sock"
    parsed = urlparse(host)
    if parsed.scheme != "unix":
        raise SwarmError(f"DOCKER_HOST={host}: function hosts mount the engine's socket, so give the "
                         "manager's unix socket (run deploy on a manager, or pass --docker-socket)")
    return parsed.path


class Stack:
    """One stack on the swarm of the engine in DOCKER_HOST (which must be a manager)."""

    def __init__(self, name: str, client: docker.DockerClient | None = None) -> None:
        self.name = name
        self._client = client

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = connect(timeout=60)
        return self._client

    def check_manager(self) -> None:
        try:
            swarm = self._docker().info().get("Swarm") or {}
        except Exception as e:
            raise SwarmUnavailable(f"cannot read Docker engine info: {e}") from e
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise SwarmUnavailable("deploy needs a swarm manager in DOCKER_HOST (docker swarm init, or a manager's "
                                   "socket)")

    def manager_addresses(self) -> list[str]:
        """The addresses of the ready manager nodes (where the gateways publish their port)."""
        nodes = self._docker().api.nodes(filters={"role": "manager"})
        return [n["Status"]["Addr"] for n in nodes
                if (n.get("Status") or {}).get("State") == "ready" and n["Status"].get("Addr")]

    def nodes(self) -> dict[str, str]:
        """Node id -> state (ready, down, ...), every node of the swarm."""
        return {n["ID"]: (n.get("Status") or {}).get("State", "") for n in self._docker().api.nodes()}

    def has_image(self, image: str) -> bool:
        try:
            self._docker().api.inspect_image(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def network(self, name: str) -> dict[str, object] | None:
        """The engine's inspection of the network named exactly `name`, or None when there is none."""
        found = [n for n in self._docker().api.networks(names=[name]) if n.get("Name") == name]
        return found[0] if found else None

    def subnets(self) -> list[str]:
        """The subnets of every network this engine knows (a new overlay must overlap none)."""
        return [c["Subnet"] for n in self._docker().api.networks()
                for c in ((n.get("IPAM") or {}).get("Config") or []) if c.get("Subnet")]

    def deploy(self, compose_file: str, *, registry_auth: bool = False) -> None:
        """`docker stack deploy` (the docker CLI reads DOCKER_HOST as we do); images are resolved by digest
        only with a registry."""
        cmd = ["docker", "stack", "deploy", "--prune", "-c", compose_file]
        cmd += ["--with-registry-auth", "--resolve-image", "always"] if registry_auth else ["--resolve-image", "never"]
        result = subprocess.run([*cmd, self.name], capture_output=True, text=True)
        if result.returncode != 0:
            raise SwarmError(f"docker stack deploy failed: {(result.stderr or result.stdout).strip()}")

    def services(self) -> list[str]:
        return [s["Spec"]["Name"] for s in self._docker().api.services(filters={"label": f"{LABEL_STACK}={self.name}"})]

    def remove(self, timeout: float = 120.0) -> list[str]:
        """Instances first (by label: tasks on a Down node never confirm), then the stack's services, and
        once they are gone its networks, secrets, configs and volumes on this node; what is left is returned."""
        api = self._docker().api
        for service in api.services(filters={"label": f"{LABEL_OWNER}={self.name}"}):
            _ignore_missing(api.remove_service, service["ID"])
        for service in api.services(filters={"label": f"{LABEL_STACK}={self.name}"}):
            _ignore_missing(api.remove_service, service["ID"])
        deadline = time.monotonic() + timeout
        left: list[str] = []
        while time.monotonic() < deadline:
            left = self._leftovers()
            if not left:
                break
            for kind, ident in self._removable():
                _ignore_missing(getattr(api, f"remove_{kind}"), ident)
            time.sleep(0.5)
        return left

    def _removable(self) -> list[tuple[str, str]]:
        api = self._docker().api
        stack = {"label": f"{LABEL_STACK}={self.name}"}
        owned = {"label": f"{LABEL_OWNER}={self.name}"}
        # instances a function host started while the first ones were removed (it refills a pool that vanishes
        # under it until its own service is gone): removed too, or they outlive the stack
        found = [("service", s["ID"]) for s in api.services(filters=owned)]
        found += [("network", n["Id"]) for f in (stack, owned) for n in api.networks(filters=f)]
        found += [("secret", s["ID"]) for s in api.secrets(filters=stack)]
        found += [("config", c["ID"]) for f in (stack, owned) for c in api.configs(filters=f)]
        found += [("volume", v["Name"]) for v in (api.volumes(filters=stack).get("Volumes") or [])]
        found += [("container", c["Id"]) for c in api.containers(all=True, filters=stack)
                  if c.get("State") not in ("running", "created", "restarting")]
        return found

    def _leftovers(self) -> list[str]:
        api = self._docker().api
        services = [s["Spec"]["Name"] for label in (LABEL_STACK, LABEL_OWNER)
                    for s in api.services(filters={"label": f"{label}={self.name}"})]
        return services + [f"{kind} {ident[:12]}" for kind, ident in self._removable() if kind != "service"]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _ignore_missing(remove: object, ident: str) -> None:
    try:
        remove(ident)  # type: ignore[operator]
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        text = str(e).lower()
        if e.status_code in (404, 409) or "not found" in text or "in use" in text:
            return  # gone meanwhile, or still in use: retried until the deadline
        raise SwarmError(f"cannot remove {ident[:12]}: {e.explanation or e}") from e


def leftover_names(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "nothing"
