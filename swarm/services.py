"""Instance services: what one runs as (user, limits, labels, DNS), created on its bridge or network, removed."""

from __future__ import annotations

import logging

import docker.errors
import msgspec
from docker.types import ContainerSpec, DNSConfig, EndpointSpec, Mount, Placement, Resources, RestartPolicy, TaskTemplate

from swarmpool.guardrails import numeric_id, resolve_uid, root_part
from swarmpool.ids import new_handle, short_id
from swarmpool.swarm.engine import Engine
from swarmpool.swarm.images import Images
from swarmpool.swarm.model import (EGRESS_NONE, ENGINE_FAULT, GUARD_PORT, LABEL_APP, LABEL_GUARD_PORT, LABEL_HANDLE,
                                   LABEL_ID, LABEL_IMAGE, LABEL_OWNER, LABEL_PORT, InstanceSpec, SwarmError,
                                   SwarmUnavailable)
from swarmpool.swarm.names import MAX_SERVICE_NAME, NAME_PART, service_name
from swarmpool.swarm.networks import Bridges

log = logging.getLogger(__name__)

INSTANCE_UID = "10001:10001"  # who runs an image whose own user is root: no passwd entry, no privileges
INSTANCE_HOME = "/home/swarmpool"  # a writable tmpfs home for INSTANCE_UID
_HOME_TMPFS_BYTES = 256 * 1024**2  # counts against the memory limit as it fills
_STOP_GRACE_NS = 2_000_000_000


class _BridgeGone(SwarmError):
    """The namespace's instance bridge vanished between our check and the create."""


def run_as(image_user: str, wanted: str | None) -> tuple[str, bool]:
    """The user an instance runs as, and whether it needs a home (a uid the image does not know)."""
    if wanted:
        return wanted, False
    uid = image_user.split(":", 1)[0].strip()
    if uid and not root_part(uid):  # unset is root, and "00", "0000:0" or "+0" are as "0" is
        return image_user, False
    return INSTANCE_UID, True


def labels(namespace: str, spec: InstanceSpec) -> dict[str, str]:
    """The labels of an instance's service and container: how we find it again, and where it is reached."""
    return {
        LABEL_OWNER: namespace,
        LABEL_APP: spec.app,
        LABEL_ID: spec.id,
        LABEL_HANDLE: spec.handle,
        LABEL_IMAGE: spec.image,
        LABEL_PORT: str(spec.port),
        **({LABEL_GUARD_PORT: str(GUARD_PORT)} if spec.guard and not spec.publish else {}),
    }


def named(namespace: str, spec: InstanceSpec) -> tuple[InstanceSpec, str]:
    """The spec with its handle drawn (if it had none) and its service name; SwarmError for an invalid name."""
    if not spec.handle:
        spec = msgspec.structs.replace(spec, handle=new_handle())
    name = service_name(namespace, spec.app, spec.handle)
    if not (NAME_PART.match(spec.app) and NAME_PART.match(spec.handle)) or len(name) > MAX_SERVICE_NAME:
        raise SwarmError(f"invalid service name {name!r} (lowercase letters, digits, '-'; at most 63 chars)")
    return spec, name


def dns_config(spec: InstanceSpec) -> DNSConfig | None:
    """Where Docker's embedded DNS forwards outside names (the filter lets only internet apps reach them);
    a closed app's resolver gives up after one second: Docker 20.10's embedded DNS leaves a query it could
    not forward unanswered, and the C library would wait 2 x 5 s for each name."""
    closed = spec.egress == EGRESS_NONE
    if not spec.dns and not closed:
        return None
    return DNSConfig(nameservers=list(spec.dns) or None, options=["timeout:1", "attempts:1"] if closed else None)


class Services:
    """Creates and removes the instance services of one namespace."""

    def __init__(self, engine: Engine, images: Images, bridges: Bridges, *, run_by_image_id: bool = True) -> None:
        self._engine = engine
        self._images = images
        self._bridges = bridges
        # Running by local image id skips the engine's pull attempt (no registry here; single node).
        self._run_by_image_id = run_by_image_id

    def create(self, spec: InstanceSpec, name: str) -> str:
        """Create the service `name` (see `named`) for `spec`; its service id."""
        try:
            try:
                return self._create_service(spec, name)
            except _BridgeGone:  # removed by another process: made anew by Bridges.ensure
                pass
            try:
                return self._create_service(spec, name)
            except _BridgeGone:  # still "not found": a dead copy is listed in its place
                self._bridges.stale(spec.egress)  # the next generation
            return self._create_service(spec, name)
        except _BridgeGone as e:
            raise SwarmUnavailable(f"{ENGINE_FAULT}: cannot create {name}: {e}") from e
        except SwarmError:
            raise
        except Exception as e:  # requests' connection errors: the engine is restarting or gone
            raise SwarmUnavailable(f"{ENGINE_FAULT} while creating {name}: {e}") from e

    def _create_service(self, spec: InstanceSpec, name: str) -> str:
        api = self._engine.client().api
        try:
            image = api.inspect_image(spec.image)
        except docker.errors.ImageNotFound as e:
            raise SwarmError(f"image {spec.image} not found on this node; build it first") from e
        except docker.errors.APIError as e:
            raise SwarmError(f"cannot inspect image {spec.image}: {e.explanation or e}") from e
        self._images.ids[spec.image] = image["Id"]
        service_labels = labels(self._engine.namespace, spec)
        user, needs_home = run_as((image.get("Config") or {}).get("User") or "", spec.user)
        if not spec.trusted_user:
            self._refuse_root(spec, image["Id"], user)
        env = {**spec.env, "SWARMPOOL_ID": spec.id}
        mounts = []
        if needs_home:
            env.setdefault("HOME", INSTANCE_HOME)
            mounts.append(Mount(INSTANCE_HOME, None, type="tmpfs", tmpfs_size=_HOME_TMPFS_BYTES, tmpfs_mode=0o1777))
        container = ContainerSpec(
            image=image["Id"] if self._run_by_image_id else spec.image,
            command=spec.command,
            env=env,
            labels=service_labels,
            user=user,  # always explicit, so the service spec says who runs it
            mounts=mounts or None,
            cap_drop=["ALL"],
            cap_add=list(spec.cap_add) or None,
            stop_grace_period=_STOP_GRACE_NS,
            init=True,  # reaps zombies and forwards SIGTERM, so stops are quick
            dns_config=dns_config(spec),
        )
        resources = Resources(
            cpu_limit=int(spec.cpus * 1e9) if spec.cpus is not None else None,
            mem_limit=spec.memory,
        )
        if spec.pids is not None:
            resources.setdefault("Limits", {})["Pids"] = spec.pids  # API 1.41; docker-py has no argument for it
        task = TaskTemplate(
            container_spec=container,
            resources=resources,
            restart_policy=RestartPolicy(condition="none"),
            placement=Placement(constraints=list(spec.constraints)) if spec.constraints else None,
        )
        # unpublished: reached by service name on `network`, one DNS record per task (VIPs need IPVS)
        endpoint = EndpointSpec(mode="dnsrr")
        network = spec.network
        if spec.publish:
            # No PublishedPort: in host mode the engine binds a free ephemeral port (see TaskStatus.endpoint),
            # on 127.0.0.1 only, because the namespace's bridge says so (API 1.41 has no host IP per port).
            endpoint = EndpointSpec(ports=[{"Protocol": "tcp", "TargetPort": spec.port, "PublishMode": "host"}])
            network = network or self._bridges.ensure(spec.egress)
        try:
            result = api.create_service(
                task,
                name=name,
                labels=service_labels,
                endpoint_spec=endpoint,
                networks=[network] if network else None,
            )
        except docker.errors.APIError as e:
            if spec.publish and not spec.network and (e.status_code == 404 or f"network {network} not found"
                                                      in str(e.explanation or e)):
                # removed meanwhile (another process's remove_all): made anew, and the create tried once more
                self._bridges.gone(spec.egress)
                raise _BridgeGone(str(e.explanation or e)) from e
            if e.status_code == 503 or "not a swarm manager" in str(e.explanation or e):
                raise SwarmUnavailable(f"{ENGINE_FAULT}: cannot create {name}: {e.explanation or e}") from e
            raise SwarmError(f"cannot create service {name} (image {spec.image}): {e.explanation or e}") from e
        except docker.errors.DockerException as e:
            raise SwarmUnavailable(f"{ENGINE_FAULT} while creating {name}: {e}") from e
        service_id: str = result["ID"]
        log.debug("created service %s for %s", service_id[:12], short_id(spec.app, spec.id))
        return service_id

    def _refuse_root(self, spec: InstanceSpec, image_id: str, user: str) -> None:
        """Raise SwarmError when `user` is uid 0, by number or by name in the image's /etc/passwd (read once
        per image id): the catalogue's own check sees names only where the image was when it was loaded."""
        part = user.split(":", 1)[0]
        if root_part(part):
            uid: int | None = 0
        elif numeric_id(part) is not None:
            return
        else:
            accounts = self._images.accounts(image_id)
            uid = resolve_uid(user, accounts[1]) if accounts is not None else None
        if uid == 0:
            raise SwarmError(f"refused to start {spec.app} as root: user {user!r} is uid 0 in image {spec.image} "
                             f"(students' code would run as root); list 'user' in apps.{spec.app}.trusted to "
                             "allow it")

    def remove(self, service_id: str) -> bool:
        """Remove a service; False if it was already gone. Never raises for NotFound."""
        try:
            self._engine.client().api.remove_service(service_id)
        except docker.errors.NotFound:
            return False
        except docker.errors.APIError as e:
            raise SwarmError(f"cannot remove service {service_id[:12]}: {e.explanation or e}") from e
        return True
