"""Async adapter over the Docker engine: one swarm service per app instance, found again by its labels."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import re
import tarfile
import threading
import time
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any, TypeVar

import aiohttp
import docker
import docker.errors
import msgspec
from docker.types import ContainerSpec, DNSConfig, EndpointSpec, Mount, Placement, Resources, RestartPolicy, TaskTemplate

from swarmpool.guardrails import numeric_id, resolve_uid, root_part
from swarmpool.ids import new_handle, short_id

log = logging.getLogger(__name__)

LABEL_OWNER = "swarmpool.owner"
LABEL_APP = "swarmpool.app"
LABEL_ID = "swarmpool.id"  # labels are the engine's: no container sees them (names and DNS it does)
LABEL_HANDLE = "swarmpool.handle"  # the random part of the service name (not derived from the id)
LABEL_IMAGE = "swarmpool.image"  # the image as the catalogue names it (the service may run it by id)
LABEL_PORT = "swarmpool.port"  # container port, for "<service name>:<port>" endpoints on a network
# on a guarded instance (cluster): the port the guard redirects to LABEL_PORT once its rules are in (swarm/guard.py)
LABEL_GUARD_PORT = "swarmpool.guard-port"
GUARD_PORT = 1  # tcpmux, unused: nothing answers on it until `swarmpool guard` has closed the instance in

LABEL_OWNER_LEASE = "swarmpool.owner-lease"  # on the config object that says which copy owns a namespace
LABEL_LEASE_HOLDER = "swarmpool.lease.holder"
LABEL_LEASE_RENEWED = "swarmpool.lease.renewed"
LABEL_SWARM_SERVICE_ID = "com.docker.swarm.service.id"
CONTAINER_ACTIONS = frozenset({"die", "oom", "kill", "stop"})
SERVICE_ACTIONS = frozenset({"remove"})

_NAMESPACE = re.compile(r"^[a-z][a-z0-9]{0,10}$")  # no '-': service names split unambiguously
_NAME_PART = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_MAX_SERVICE_NAME = 63
_STOP_GRACE_NS = 2_000_000_000
EGRESS_NONE = "none"  # no new connection out of the instance at all (the packet filter's default)
EGRESS_INTERNET = "internet"  # public addresses only: never the host, private ranges or other instances
EGRESS_CLASSES = (EGRESS_NONE, EGRESS_INTERNET)
INSTANCE_UID = "10001:10001"  # who runs an image whose own user is root: no passwd entry, no privileges
INSTANCE_HOME = "/home/swarmpool"  # a writable tmpfs home for INSTANCE_UID
_HOME_TMPFS_BYTES = 256 * 1024**2  # counts against the memory limit as it fills
_NETWORK_TIMEOUT = 20.0  # waiting for the containers to leave the bridge before removing it
_CONFIG_NETWORK_TIMEOUT = 10.0  # then for the bridge's removal to free its config network
_T = TypeVar("_T")
NODE_CORES_TTL = 60.0  # seconds the nodes' cores of the last nodes listing are reused by the start budget
NODE_ID_TTL = 30.0  # seconds this engine's swarm node id is reused (it changes only when the node leaves its swarm)


class SwarmError(Exception):
    """The engine refused or failed an operation on our services."""


class _BridgeGone(SwarmError):
    """The namespace's instance bridge vanished between our check and the create."""


class _Bridge:
    """Where the adapter stands with one egress class's instance bridge."""

    def __init__(self) -> None:
        self.generation = ""  # "": not chosen yet
        self.ready = False  # its networks exist (as far as we know)
        self.stale = False  # a task was rejected by this generation's dead copy: use the next


class SwarmUnavailable(SwarmError):
    """The Docker engine cannot be reached (or is not a swarm manager)."""


class InstanceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What one instance service runs."""

    app: str
    id: str
    handle: str = ""  # names the service; "" draws a new one (never the id: neighbours see names in DNS)
    image: str
    port: int  # container port
    command: list[str] | None = None
    env: dict[str, str] = {}
    cpus: float | None = None
    memory: int | None = None  # bytes
    pids: int | None = None  # processes and threads together
    user: str | None = None  # None: the image's user, or INSTANCE_UID when that is root
    trusted_user: bool = False  # the app trusts `user`: it may run as root (else its creation is refused)
    cap_add: list[str] = []  # all other capabilities are dropped
    constraints: list[str] = []
    publish: bool = True  # host-mode port on 127.0.0.1 (local, on the namespace's bridge); False: by name on `network`
    network: str | None = None
    egress: str = EGRESS_NONE  # which bridge a published instance joins: none (closed) or internet (public only)
    dns: list[str] = []  # nameservers Docker's embedded DNS forwards outside names to; []: the host's
    # reached only through GUARD_PORT, which `swarmpool guard` opens after its rules (unpublished instances only)
    guard: bool = False


class ServiceInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One of our services, as listed by label."""

    service_id: str
    name: str
    app: str
    id: str  # from its label, never from its name
    created_at: float  # unix seconds
    handle: str = ""  # from its label ("" for a service an older version named after its id)


class TaskStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Where the single task of an instance service is."""

    state: str  # docker task state, or "missing" when the service is gone
    endpoint: str = ""  # "127.0.0.1:<port>" (published) or "<service name>:<port>" (network)
    exit_code: int | None = None
    error: str = ""
    container_id: str = ""
    node: str = ""  # swarm node id the task is placed on ("" before it is scheduled)
    created_at: float = 0.0  # when the swarm created the task (its CreatedAt; 0: not known)
    running_at: float | None = None  # when its node's engine reported it running (Status.Timestamp while running)


class EngineEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A Docker engine event about one of our containers or services."""

    type: str  # "container" or "service"
    action: str  # die, oom, kill, stop (container); remove (service)
    at: float  # unix seconds
    app: str
    id: str  # from the container's labels; "" for a service event (those carry only the name: map service_id)
    service_id: str = ""
    container_id: str = ""
    exit_code: int | None = None


GENERATIONS = "0123456789abcdefghijklmnopqrstuvwxyz"  # of a namespace's instance bridge (see _ensure_bridge)
ENGINE_FAULT = "engine unavailable"  # starts in a failure's reason when the engine, not the app, failed
_STALE_NETWORK = re.compile(r"^network \S+ exists$|networks have same bridge name")


def bridge_name(namespace: str, generation: str = "+", egress: str = EGRESS_NONE) -> str:
    """The Linux interface of a namespace's instance bridge of one egress class and generation (at most 15
    characters); by default the packet filter's pattern for all generations ('.' and '-' are in no namespace,
    so the patterns of two namespaces or two classes never overlap)."""
    return f"sp{namespace}{'.' if egress == EGRESS_NONE else '-'}{generation}"


def instance_network_name(namespace: str, generation: str = "0", egress: str = EGRESS_NONE) -> str:
    """The swarm-scoped bridge network that published instances of a namespace and egress class join."""
    base = f"{namespace}-instances" if egress == EGRESS_NONE else f"{namespace}-{egress}"
    return base + ("" if generation == "0" else f"-{generation}")


def stale_network(error: str) -> bool:
    """Whether a task was rejected because this node's engine kept a dead copy of our bridge across its
    restart (moby#38318: "network <id> exists", then "networks have same bridge name")."""
    return bool(_STALE_NETWORK.search(error))


def run_as(image_user: str, wanted: str | None) -> tuple[str, bool]:
    """The user an instance runs as, and whether it needs a home (a uid the image does not know)."""
    if wanted:
        return wanted, False
    uid = image_user.split(":", 1)[0].strip()
    if uid and not root_part(uid):  # unset is root, and "00", "0000:0" or "+0" are as "0" is
        return image_user, False
    return INSTANCE_UID, True


def service_name(namespace: str, app: str, handle: str) -> str:
    """The swarm service name of an instance: <namespace>-<app>-<handle>. Every instance on its network reads
    it in DNS (reverse lookups, task names), so it holds the random handle, never the id (the capability)."""
    return f"{namespace}-{app}-{handle}"


def parse_timestamp(value: str) -> float:
    """Unix seconds from Docker's RFC 3339 time with nanoseconds ("2024-05-01T12:00:00.123456789Z")."""
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$", value)
    if not m:
        return 0.0
    base = datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return base.replace(tzinfo=base.tzinfo or timezone.utc).timestamp() + float("0." + (m.group(2) or "0"))


class Swarm:
    """Creates, watches and removes the instance services of one namespace."""

    def __init__(
        self,
        namespace: str = "sp",
        client: docker.DockerClient | None = None,
        *,
        run_by_image_id: bool = True,
        max_threads: int = 16,
    ) -> None:
        if not _NAMESPACE.match(namespace):
            raise ValueError(f"namespace must match {_NAMESPACE.pattern}, got {namespace!r}")
        self.namespace = namespace
        # Running by local image id skips the engine's pull attempt (no registry here; single node).
        self._run_by_image_id = run_by_image_id
        self._client = client
        self._client_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="swarm")
        self._closed = False
        self._inflight: set[asyncio.Future[Any]] = set()
        self._http: aiohttp.ClientSession | None = None  # readiness probes, created on first use
        self._bridge_lock = threading.Lock()
        self._bridges = {egress: _Bridge() for egress in EGRESS_CLASSES}  # one per egress class
        self._image_ids: dict[str, str] = {}  # catalogue image -> its id at the last create
        self._accounts: dict[str, tuple[str, str, str]] = {}  # image id -> its user and user database
        self._node_id: tuple[str, float] | None = None  # this engine's node id, and when it was read
        self._cores: tuple[dict[str, int], float] | None = None  # node id -> cores of the last nodes listing, and its time

    # -- plumbing -----------------------------------------------------------------------------

    def _docker(self) -> docker.DockerClient:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = docker.from_env(max_pool_size=32)
                except docker.errors.DockerException as e:
                    raise SwarmUnavailable(f"cannot reach the Docker engine (is dockerd running? DOCKER_HOST?): {e}") from e
            return self._client

    async def _run(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        if self._closed:
            raise SwarmError("this Swarm adapter is closed")
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))
        self._inflight.add(future)
        future.add_done_callback(self._inflight.discard)
        # shield: a cancelled caller must not orphan a create that the engine still completes
        return await asyncio.shield(future)

    async def settle(self) -> None:
        """Wait for engine calls still running in threads (their callers may have been cancelled)."""
        while self._inflight:
            await asyncio.gather(*list(self._inflight), return_exceptions=True)

    def _labels(self, spec: InstanceSpec) -> dict[str, str]:
        return {
            LABEL_OWNER: self.namespace,
            LABEL_APP: spec.app,
            LABEL_ID: spec.id,
            LABEL_HANDLE: spec.handle,
            LABEL_IMAGE: spec.image,
            LABEL_PORT: str(spec.port),
            **({LABEL_GUARD_PORT: str(GUARD_PORT)} if spec.guard and not spec.publish else {}),
        }

    # -- engine ---------------------------------------------------------------------------------

    async def ping(self) -> None:
        """Raise SwarmUnavailable with a clear message if the engine cannot be reached."""

        def ping() -> None:
            try:
                self._docker().ping()
            except docker.errors.DockerException as e:
                raise SwarmUnavailable(f"Docker engine did not answer a ping: {e}") from e
            except Exception as e:  # requests' connection errors are not DockerExceptions
                raise SwarmUnavailable(f"Docker engine did not answer a ping: {e}") from e

        await self._run(ping)

    async def ensure_swarm(self) -> bool:
        """Initialise a single-node swarm (advertise 127.0.0.1) if none is active; True if it did."""

        def ensure() -> bool:
            client = self._docker()
            try:
                info = client.info()
            except Exception as e:
                raise SwarmUnavailable(f"cannot read Docker engine info: {e}") from e
            swarm = info.get("Swarm") or {}
            state = swarm.get("LocalNodeState", "")
            if state == "active":
                if not swarm.get("ControlAvailable"):
                    raise SwarmUnavailable("this Docker node is a swarm worker; swarmpool needs a manager node")
                return False
            if state not in ("inactive", ""):
                raise SwarmUnavailable(f"swarm is in state {state!r}; fix it with `docker swarm` first")
            log.info("initialising a single-node Docker swarm listening on 127.0.0.1 only")
            try:  # control (2377) and gossip (7946) on loopback; the data path says loopback too
                client.swarm.init(advertise_addr="127.0.0.1", listen_addr="127.0.0.1:2377", data_path_addr="127.0.0.1")
            except docker.errors.APIError as e:
                raise SwarmError(f"docker swarm init failed: {e.explanation or e}") from e
            return True

        return await self._run(ensure)

    # -- services -------------------------------------------------------------------------------

    async def has_image(self, image: str) -> bool:
        """True when `image` is present on this node (nothing can be pulled here)."""

        def inspect() -> bool:
            try:
                self._docker().api.inspect_image(image)
                return True
            except docker.errors.ImageNotFound:
                return False

        return await self._run(inspect)

    async def create(self, spec: InstanceSpec) -> str:
        """Start one instance service and return its service id."""
        if not spec.handle:
            spec = msgspec.structs.replace(spec, handle=new_handle())
        name = service_name(self.namespace, spec.app, spec.handle)
        if not (_NAME_PART.match(spec.app) and _NAME_PART.match(spec.handle)) or len(name) > _MAX_SERVICE_NAME:
            raise SwarmError(f"invalid service name {name!r} (lowercase letters, digits, '-'; at most 63 chars)")
        return await self._run(self._create, spec, name)

    async def network_info(self, name: str) -> dict[str, object] | None:
        """The engine's inspection of the network named exactly `name`; None if there is none."""

        def inspect() -> dict[str, object] | None:
            found = [n for n in self._docker().api.networks(names=[name]) if n.get("Name") == name]
            return dict(found[0]) if found else None

        return await self._run(inspect)

    async def image_accounts(self, image: str) -> tuple[str, str, str] | None:
        """The image's own user (Config.User), /etc/passwd and /etc/group as text ("" when absent); None when
        the image is not on this node. Read from a container that is created, never started, and removed."""
        return await self._run(self._image_accounts, image)

    def _image_accounts(self, image: str) -> tuple[str, str, str] | None:
        api = self._docker().api
        try:
            found = api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return None
        if (known := self._accounts.get(found["Id"])) is not None:
            return known
        try:
            container = api.create_container(found["Id"], entrypoint=["/nonexistent"], command=[],
                                             labels={LABEL_OWNER: self.namespace}, network_disabled=True)["Id"]
            try:
                passwd, group = self._read_file(container, "/etc/passwd"), self._read_file(container, "/etc/group")
            finally:
                api.remove_container(container, force=True)
        except docker.errors.APIError as e:
            raise SwarmError(f"cannot read the users of image {image}: {e.explanation or e}") from e
        accounts = (str((found.get("Config") or {}).get("User") or ""), passwd, group)
        self._accounts[found["Id"]] = accounts
        return accounts

    def _read_file(self, container: str, path: str) -> str:
        """A small text file of a (stopped) container; "" when it has none."""
        try:
            stream, _ = self._docker().api.get_archive(container, path)
        except docker.errors.NotFound:
            return ""
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            data = tar.extractfile(member) if member is not None and member.isfile() else None
            return data.read(1024 * 1024).decode(errors="replace") if data is not None else ""

    def image_id(self, image: str) -> str:
        """The id `image` had at the last create (instances of one id serve identical files)."""
        return self._image_ids.get(image, "")

    async def resolve_image(self, image: str) -> str:
        """The id `image` stands for now on this node ("" if absent): a tag moved means new instances."""

        def inspect() -> str:
            try:
                return str(self._docker().api.inspect_image(image)["Id"])
            except docker.errors.ImageNotFound:
                return ""

        return await self._run(inspect)

    def _create(self, spec: InstanceSpec, name: str) -> str:
        try:
            try:
                return self._create_service(spec, name)
            except _BridgeGone:  # removed by another process: made anew by _ensure_bridge
                pass
            try:
                return self._create_service(spec, name)
            except _BridgeGone:  # still "not found": a dead copy is listed in its place
                self._bridges[spec.egress].stale = True  # the next generation
            return self._create_service(spec, name)
        except _BridgeGone as e:
            raise SwarmUnavailable(f"{ENGINE_FAULT}: cannot create {name}: {e}") from e
        except SwarmError:
            raise
        except Exception as e:  # requests' connection errors: the engine is restarting or gone
            raise SwarmUnavailable(f"{ENGINE_FAULT} while creating {name}: {e}") from e

    def _create_service(self, spec: InstanceSpec, name: str) -> str:
        api = self._docker().api
        try:
            image = api.inspect_image(spec.image)
        except docker.errors.ImageNotFound as e:
            raise SwarmError(f"image {spec.image} not found on this node; build it first") from e
        except docker.errors.APIError as e:
            raise SwarmError(f"cannot inspect image {spec.image}: {e.explanation or e}") from e
        self._image_ids[spec.image] = image["Id"]
        labels = self._labels(spec)
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
            labels=labels,
            user=user,  # always explicit, so the service spec says who runs it
            mounts=mounts or None,
            cap_drop=["ALL"],
            cap_add=list(spec.cap_add) or None,
            stop_grace_period=_STOP_GRACE_NS,
            init=True,  # reaps zombies and forwards SIGTERM, so stops are quick
            dns_config=self._dns_config(spec),
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
            network = network or self._ensure_bridge(spec.egress)
        try:
            result = api.create_service(
                task,
                name=name,
                labels=labels,
                endpoint_spec=endpoint,
                networks=[network] if network else None,
            )
        except docker.errors.APIError as e:
            if spec.publish and not spec.network and (e.status_code == 404 or f"network {network} not found"
                                                      in str(e.explanation or e)):
                # removed meanwhile (another process's remove_all): made anew, and the create tried once more
                self._bridges[spec.egress].ready = False
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
            accounts = self._image_accounts(image_id)
            uid = resolve_uid(user, accounts[1]) if accounts is not None else None
        if uid == 0:
            raise SwarmError(f"refused to start {spec.app} as root: user {user!r} is uid 0 in image {spec.image} "
                             f"(students' code would run as root); list 'user' in apps.{spec.app}.trusted to "
                             "allow it")

    @staticmethod
    def _dns_config(spec: InstanceSpec) -> DNSConfig | None:
        """Where Docker's embedded DNS forwards outside names (the filter lets only internet apps reach them);
        a closed app's resolver gives up after one second: Docker 20.10's embedded DNS leaves a query it could
        not forward unanswered, and the C library would wait 2 x 5 s for each name."""
        closed = spec.egress == EGRESS_NONE
        if not spec.dns and not closed:
            return None
        return DNSConfig(nameservers=list(spec.dns) or None, options=["timeout:1", "attempts:1"] if closed else None)

    def _ensure_bridge(self, egress: str = EGRESS_NONE) -> str:
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
        bridge = self._bridges[egress]
        with self._bridge_lock:
            if bridge.generation == "":
                bridge.generation = self._first_generation(egress)
            if bridge.stale:
                self._next_generation(egress)
            name = instance_network_name(self.namespace, bridge.generation, egress)
            if bridge.ready:
                return name
            api = self._docker().api
            existing = {n["Name"] for n in api.networks(names=[name, name + "-config"])}
            requests = []
            if name + "-config" not in existing:
                requests.append({
                    "Name": name + "-config", "ConfigOnly": True, "Labels": {LABEL_OWNER: self.namespace},
                    "Options": {
                        "com.docker.network.bridge.name": bridge_name(self.namespace, bridge.generation, egress),
                        "com.docker.network.bridge.host_binding_ipv4": "127.0.0.1",
                        "com.docker.network.bridge.enable_icc": "false",
                    },
                })
            if name not in existing:
                requests.append({"Name": name, "Driver": "bridge", "Scope": "swarm",
                                 "ConfigFrom": {"Network": name + "-config"}})
            for request in requests:
                try:
                    api._result(api._post_json(api._url("/networks/create"), data=request), json=True)
                except docker.errors.APIError as e:
                    if e.status_code != 409:  # 409: another host process created it first
                        raise SwarmError(f"cannot create network {request['Name']}: {e.explanation or e}") from e
            bridge.ready = True
            return name

    def _next_generation(self, egress: str) -> None:
        """Move to the next generation (another host may have created it already: it is shared)."""
        bridge = self._bridges[egress]
        later = GENERATIONS[GENERATIONS.index(bridge.generation) + 1:]
        if not later:
            raise SwarmError(f"every instance bridge generation of {self.namespace} is taken; restart dockerd "
                             f"with no instances running, then remove the "
                             f"{instance_network_name(self.namespace, egress=egress)}* networks")
        log.warning("instance bridge %s was kept dead by an engine restart; using %s",
                    bridge_name(self.namespace, bridge.generation, egress),
                    bridge_name(self.namespace, later[0], egress))
        bridge.generation, bridge.stale, bridge.ready = later[0], False, False

    def _first_generation(self, egress: str) -> str:
        """The newest generation whose config network exists (in use by another host, or a dead copy's
        that the first rejected task moves past), else the first."""
        ours = {n["Name"] for n in self._docker().api.networks(filters={"label": f"{LABEL_OWNER}={self.namespace}"})}
        found = [g for g in GENERATIONS if instance_network_name(self.namespace, g, egress) + "-config" in ours]
        return found[-1] if found else GENERATIONS[0]

    def _note_task_error(self, error: str) -> str:
        """A task's error, marked as the engine's fault when a dead copy of our bridge rejected it."""
        if not stale_network(error):
            return error
        for bridge in self._bridges.values():  # the error does not say which class: move every one on
            if bridge.generation:
                bridge.stale = True
        return f"{ENGINE_FAULT}: instance bridge kept dead by an engine restart ({error})"

    def _remove_bridge(self) -> None:
        """Remove the namespace's instance bridges once their containers have left them (if they exist)."""
        api = self._docker().api
        deadline = time.monotonic() + _NETWORK_TIMEOUT
        # removing a swarm network while a container still leaves it can leave a dead local copy that
        # rejects the next create ("not found"): wait for the namespace's containers to be gone first
        label = f"{LABEL_OWNER}={self.namespace}"
        while api.containers(all=True, filters={"label": label}) and time.monotonic() < deadline:
            time.sleep(0.2)
        with self._bridge_lock:
            for egress, bridge in self._bridges.items():
                bridge.ready = False
                self._remove_networks(egress, deadline)

    def _remove_networks(self, egress: str, deadline: float) -> None:
        """Remove the swarm-scoped bridges of one egress class, then their config-only networks."""
        api = self._docker().api
        ours = {n["Name"] for n in api.networks(filters={"name": instance_network_name(self.namespace, egress=egress)})}
        names = [instance_network_name(self.namespace, g, egress) for g in GENERATIONS]
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

    async def status(self, service_id: str) -> TaskStatus:
        """The state of the service's (single, newest) task; "missing" once the service is gone."""
        return await self._run(self._status, service_id)

    def _status(self, service_id: str) -> TaskStatus:
        api = self._docker().api
        try:
            service = api.inspect_service(service_id)
            tasks = api.tasks(filters={"service": service_id})
        except docker.errors.NotFound:
            return TaskStatus(state="missing")
        if not tasks:
            return TaskStatus(state="new")
        task = max(tasks, key=lambda t: (t.get("Version", {}).get("Index", 0), t.get("CreatedAt", "")))
        status = task.get("Status") or {}
        container = status.get("ContainerStatus") or {}
        state = status.get("State", "new")
        endpoint = ""
        if state == "running":
            endpoint = self._endpoint(service, status)
        exit_code = container.get("ExitCode")
        return TaskStatus(
            state=state,
            endpoint=endpoint,
            exit_code=exit_code if state in ("complete", "failed", "shutdown", "rejected") else None,
            error=self._note_task_error(status.get("Err", "") or ""),
            container_id=container.get("ContainerID", "") or "",
            node=task.get("NodeID", "") or "",
        )

    async def task_states(self) -> dict[str, TaskStatus]:
        """The newest task of every service of ours, by service id: one task listing, one listing of
        this node's containers (after an engine restart the swarm reports dead tasks as running
        until its agent catches up; the container on this node already tells the truth)."""
        return await self._run(self._task_states)

    def _task_states(self) -> dict[str, TaskStatus]:
        client = self._docker()
        api = client.api
        tasks = [t for t in api.tasks(filters={"name": f"{self.namespace}-"})
                 if ((t.get("Spec") or {}).get("ContainerSpec") or {}).get("Labels", {}).get(LABEL_OWNER)
                 == self.namespace]
        node = self._local_node()
        containers = {c["Id"]: c for c in api.containers(all=True, filters={"label": f"{LABEL_OWNER}={self.namespace}"})}
        newest: dict[str, dict[str, Any]] = {}
        for task in tasks:
            key = (task.get("Version", {}).get("Index", 0), task.get("CreatedAt", ""))
            known = newest.get(task.get("ServiceID", ""))
            if known is None or key > (known.get("Version", {}).get("Index", 0), known.get("CreatedAt", "")):
                newest[task.get("ServiceID", "")] = task
        states = {}
        for service_id, task in newest.items():
            status = task.get("Status") or {}
            container_id = (status.get("ContainerStatus") or {}).get("ContainerID", "") or ""
            state, error = status.get("State", "new"), self._note_task_error(status.get("Err", "") or "")
            exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
            if state == "running" and node and task.get("NodeID") == node:
                container = containers.get(container_id)
                if container is None or container.get("State") != "running":
                    state = "failed"
                    error = f"container {container.get('State', 'gone') if container else 'gone'} on this node"
                    exit_code = None
            states[service_id] = TaskStatus(
                state=state, exit_code=exit_code if state in ("complete", "failed", "shutdown", "rejected") else None,
                error=error, container_id=container_id, node=task.get("NodeID", "") or "",
                created_at=parse_timestamp(task.get("CreatedAt", "")),
                running_at=(parse_timestamp(status.get("Timestamp", "")) or None) if state == "running" else None)
        return states

    def _local_node(self) -> str:
        """The swarm node id of this engine: `info` costs the engine a count of everything it holds (a tenth
        of a second with hundreds of containers), so a reconcile pass asks at most every NODE_ID_TTL seconds."""
        now = time.monotonic()
        if self._node_id is None or now - self._node_id[1] > NODE_ID_TTL:
            self._node_id = (((self._docker().info().get("Swarm") or {}).get("NodeID")) or "", now)
        return self._node_id[0]

    async def nodes(self) -> dict[str, str]:
        """Node id -> state (ready, down, unknown, disconnected) of every node of the swarm, in one
        listing; the node of this engine is ready (we are talking to it). A task on a Down node keeps
        reporting `running`: only the node's state tells that it is lost."""
        return await self._run(self._nodes)

    async def node_cores(self) -> dict[str, int]:
        """Node id -> its cores (the engine's NanoCPUs), from a nodes listing at most NODE_CORES_TTL s old; never
        raises: an engine out of sight keeps what was known (tried again after the TTL, so a top-up never waits on
        it twice a minute)."""
        if self._cores is None or time.monotonic() - self._cores[1] > NODE_CORES_TTL:
            try:
                await self.nodes()
            except (SwarmError, docker.errors.DockerException, OSError) as err:
                log.debug("nodes' cores not listed: %s", err)
                self._cores = (self._cores[0] if self._cores else {}, time.monotonic())
        return dict(self._cores[0]) if self._cores else {}

    def _nodes(self) -> dict[str, str]:
        client = self._docker()
        listed = client.api.nodes()
        states = {n["ID"]: ((n.get("Status") or {}).get("State") or "unknown") for n in listed}
        cores = {n["ID"]: int((((n.get("Description") or {}).get("Resources") or {}).get("NanoCPUs") or 0) // 10**9)
                 for n in listed}
        self._cores = ({node: n for node, n in cores.items() if n > 0}, time.monotonic())
        here = self._local_node()
        if here:
            states[here] = "ready"
        return states

    @staticmethod
    def _endpoint(service: dict[str, Any], status: dict[str, Any]) -> str:
        spec = service.get("Spec", {})
        ports = (spec.get("EndpointSpec") or {}).get("Ports") or []
        if ports:
            published = (status.get("PortStatus") or {}).get("Ports") or []
            for port in published:
                if port.get("PublishedPort"):
                    return f"127.0.0.1:{port['PublishedPort']}"
            return ""
        labels = spec.get("Labels") or {}
        # a guarded instance is reached only where the guard's redirect answers, so never before its rules
        port = labels.get(LABEL_GUARD_PORT) or labels.get(LABEL_PORT, "")
        return f"{spec.get('Name', '')}:{port}" if port else ""

    async def logs_contain(self, service_id: str, marker: str) -> bool:
        """True if the service's logs (stdout and stderr) contain marker; False also when it is gone."""

        def logs() -> bool:
            try:
                data = self._docker().api.service_logs(service_id, stdout=True, stderr=True, follow=False)
            except docker.errors.NotFound:
                return False
            raw = data if isinstance(data, bytes) else b"".join(data)
            return marker.encode() in raw

        return await self._run(logs)

    async def remove(self, service_id: str) -> bool:
        """Remove a service; False if it was already gone. Never raises for NotFound."""

        def remove() -> bool:
            try:
                self._docker().api.remove_service(service_id)
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as e:
                raise SwarmError(f"cannot remove service {service_id[:12]}: {e.explanation or e}") from e
            return True

        return await self._run(remove)

    async def list_ours(self, app: str | None = None) -> list[ServiceInfo]:
        """Our services (label owner == namespace), optionally of one app, oldest first."""
        labels = [f"{LABEL_OWNER}={self.namespace}"] + ([f"{LABEL_APP}={app}"] if app else [])
        services = await self._run(lambda: self._docker().api.services(filters={"label": labels}))
        infos = []
        for s in services:
            spec_labels = s.get("Spec", {}).get("Labels") or {}
            infos.append(
                ServiceInfo(
                    service_id=s["ID"],
                    name=s.get("Spec", {}).get("Name", ""),
                    app=spec_labels.get(LABEL_APP, ""),
                    id=spec_labels.get(LABEL_ID, ""),
                    created_at=parse_timestamp(s.get("CreatedAt", "")),
                    handle=spec_labels.get(LABEL_HANDLE, ""),
                )
            )
        return sorted(infos, key=lambda i: i.created_at)

    # -- one owner per namespace ------------------------------------------------------------------

    async def claim_namespace(self, holder: str, ttl: float) -> str | None:
        """Take this namespace's owner lease on the engine (a labelled swarm config, changed only by
        version-checked updates); None when we hold it now, else who does. A lease in `holder`'s own
        name (a copy of us that died) or not renewed for `ttl` seconds is taken over."""
        return await self._run(self._claim_namespace, holder, ttl)

    def _claim_namespace(self, holder: str, ttl: float) -> str | None:
        api = self._docker().api
        name = self._lease_name()
        labels = {LABEL_OWNER_LEASE: self.namespace, LABEL_LEASE_HOLDER: holder,
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
        return None if self._update_lease(lease, labels) else f"{current.get(LABEL_LEASE_HOLDER, '?')} (just now)"

    async def renew_namespace(self, holder: str) -> bool:
        """Renew our owner lease; False when it is no longer ours (taken over, or removed)."""
        def renew() -> bool:
            try:
                lease = self._docker().api.inspect_config(self._lease_name())
            except docker.errors.NotFound:
                return False
            labels = (lease.get("Spec") or {}).get("Labels") or {}
            if labels.get(LABEL_LEASE_HOLDER) != holder:
                return False
            return self._update_lease(lease, {**labels, LABEL_LEASE_RENEWED: f"{time.time():.3f}"})
        return await self._run(renew)

    async def release_namespace(self, holder: str) -> None:
        """Give the owner lease back (only if it is still ours)."""
        def release() -> None:
            api = self._docker().api
            try:
                lease = api.inspect_config(self._lease_name())
                if ((lease.get("Spec") or {}).get("Labels") or {}).get(LABEL_LEASE_HOLDER) == holder:
                    api.remove_config(lease["ID"])
            except docker.errors.NotFound:
                pass
        await self._run(release)

    def _lease_name(self) -> str:
        return f"swarmpool-owner-{self.namespace}"

    def _engine_now(self) -> float:
        """The engine's clock (lease ages compare the manager's times with each other, not ours)."""
        return parse_timestamp(str(self._docker().info().get("SystemTime", ""))) or time.time()

    def _update_lease(self, lease: dict[str, Any], labels: dict[str, str]) -> bool:
        api = self._docker().api
        spec = {**(lease.get("Spec") or {}), "Labels": labels}
        url = api._url("/configs/{0}/update", lease["ID"])
        response = api._post_json(url, data=spec, params={"version": lease["Version"]["Index"]})
        try:
            api._raise_for_status(response)
            return True
        except docker.errors.APIError:  # out of sequence: someone else changed it first
            return False

    async def remove_all(self) -> int:
        """Remove every service of this namespace, then its instance bridge; returns how many services went."""
        await self.settle()  # a create finishing after the listing would leak
        removed = await self._remove_all()
        await self._run(self._remove_bridge)
        return removed

    async def _remove_all(self) -> int:
        """Remove every service of this namespace; returns how many were removed."""
        ours = await self.list_ours()
        removed = await asyncio.gather(*(self.remove(s.service_id) for s in ours))
        return sum(removed)

    # -- events ---------------------------------------------------------------------------------

    async def events(self, since: float | None = None) -> AsyncGenerator[EngineEvent, None]:
        """Follow engine events about our containers (die, oom, kill, stop) and services (remove).

        Use with `contextlib.aclosing` (or cancel the consuming task): closing the generator closes
        the engine stream, which ends the reader thread. `since` replays events from that unix time.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[EngineEvent | BaseException | None] = asyncio.Queue()
        filters = {"type": ["container", "service"], "event": sorted(CONTAINER_ACTIONS | SERVICE_ACTIONS)}
        kwargs: dict[str, Any] = {"decode": True, "filters": filters}
        if since is not None:
            kwargs["since"] = since
        try:
            stream = await self._run(lambda: self._docker().events(**kwargs))
        except docker.errors.DockerException as e:
            raise SwarmUnavailable(f"cannot follow Docker events: {e}") from e
        closing = threading.Event()

        def put(item: EngineEvent | BaseException | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                pass

        def pump() -> None:
            try:
                for raw in stream:
                    event = self._parse_event(raw)
                    if event is not None:
                        put(event)
            except Exception as e:
                if not closing.is_set():
                    put(SwarmUnavailable(f"Docker event stream broke: {e}"))
            finally:
                put(None)

        reader = threading.Thread(target=pump, name=f"swarm-events-{self.namespace}", daemon=True)
        reader.start()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            closing.set()
            stream.close()
            await asyncio.to_thread(reader.join, 5.0)

    def _parse_event(self, raw: dict[str, Any]) -> EngineEvent | None:
        kind = raw.get("Type", "")
        action = raw.get("Action", "")
        actor = raw.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        at = raw["timeNano"] / 1e9 if "timeNano" in raw else float(raw.get("time", 0))
        if kind == "container" and action in CONTAINER_ACTIONS:
            if attrs.get(LABEL_OWNER) != self.namespace:
                return None
            code = attrs.get("exitCode")
            return EngineEvent(
                type=kind,
                action=action,
                at=at,
                app=attrs.get(LABEL_APP, ""),
                id=attrs.get(LABEL_ID, ""),
                service_id=attrs.get(LABEL_SWARM_SERVICE_ID, ""),
                container_id=actor.get("ID", ""),
                exit_code=int(code) if code not in (None, "") else None,
            )
        if kind == "service" and action in SERVICE_ACTIONS:
            # Service events carry only the name, not labels: <namespace>-<app>-<handle>. The id is not in it
            # (nor, in an older version's names, taken from it): who needs the instance maps the service id.
            prefix = self.namespace + "-"
            name = attrs.get("name", "")
            if not name.startswith(prefix) or "-" not in name[len(prefix):]:
                return None
            app = name[len(prefix):].rsplit("-", 1)[0]
            return EngineEvent(type=kind, action=action, at=at, app=app, id="", service_id=actor.get("ID", ""))
        return None

    async def probe_http(self, endpoint: str, path: str) -> bool:
        """True when GET http://<endpoint><path> answers 2xx (the readiness probe of an instance)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2),
                                               connector=aiohttp.TCPConnector(limit=0, force_close=True))
        try:
            async with self._http.get(f"http://{endpoint}{path}", allow_redirects=False) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def close(self) -> None:
        """Release the thread pool, the engine connection and the probe client."""
        if self._closed:
            return
        self._closed = True
        if self._http is not None:
            await self._http.close()
        await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
