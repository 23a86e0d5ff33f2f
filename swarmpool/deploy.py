"""`swarmpool deploy`: the control plane as a swarm stack (NATS cluster, function hosts, gateways), from one
standard compose file that `deploy --print` writes, so operators can `docker stack deploy` it themselves."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import re
import secrets
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from swarmpool.bus.roles import ROLES, Access, server_users, user_name
from swarmpool.bus.subjects import Subjects
from swarmpool.catalogue import parse
from swarmpool.files import write_private
from swarmpool.swarm.model import GUARD_PORT, LABEL_OWNER
from swarmpool.swarm.names import NAMESPACE

CONTROL_REPOSITORY = "swarmpool/control"
COMPOSE_VERSION = "3.8"
NATS_CLIENT_PORT = 4222
NATS_ROUTE_PORT = 6222
GATEWAY_PORT = 8000  # inside the gateway container; --port is what each node publishes
_STACK = NAMESPACE  # the stack name is the namespace


def control_image(version: str | None = None) -> str:
    """The documented name of the control-plane image: swarmpool/control:<version>."""
    if version is None:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as installed

        try:
            version = installed("swarmpool")
        except PackageNotFoundError:
            version = "0.0.0"
    return f"{CONTROL_REPOSITORY}:{version}"


class DeployError(Exception):
    """Options or inputs that cannot be deployed; the message says which and why."""


@dataclass(frozen=True)
class Options:
    """What `swarmpool deploy` was asked for."""

    stack: str = "sp"
    port: int = 8000
    image: str = field(default_factory=control_image)
    nats_replicas: int = 3
    nats_port: int | None = None  # the NATS client port published on managers for operators (TLS only)
    docker_socket: str = "/var/run/docker.sock"  # the engine socket on every node (function hosts, guards)
    functions_replicas: int = 2
    gateway_label: str | None = None  # place gateways on nodes with this label (=true) instead of on managers
    tls: bool = False  # nats-server certificate and key given (secrets nats-cert.pem, nats-key.pem)
    tls_ca: bool = False  # and a CA (secret nats-ca.pem) that clients trust
    encrypt_overlays: bool = False  # IPsec between nodes on the stack's overlays (docs/design-network.md)
    instances_subnet: str | None = None  # the instances' overlay (--instances-subnet); None: sized and chosen

    def check(self) -> None:
        if not _STACK.match(self.stack):
            raise DeployError(f"stack name must match {_STACK.pattern} (it is also the namespace of the "
                              f"instances' service names and labels), got {self.stack!r}")
        if self.nats_replicas not in (1, 3):
            raise DeployError(f"--nats-replicas must be 1 or 3, got {self.nats_replicas}")
        for name, port in (("--port", self.port), ("--nats-port", self.nats_port)):
            if port is not None and not 1 <= port <= 65535:
                raise DeployError(f"{name} must be a TCP port (1-65535), got {port}")
        if self.nats_port is not None and not self.tls:
            raise DeployError("--nats-port publishes NATS beyond the swarm: give --tls-cert and --tls-key")
        if self.functions_replicas < 1:
            raise DeployError("--functions-replicas must be at least 1")
        if not self.docker_socket.startswith("/"):
            raise DeployError(f"--docker-socket must be an absolute path, got {self.docker_socket!r}")
        if self.instances_subnet is not None:
            try:
                subnet = ipaddress.IPv4Network(self.instances_subnet)
            except ValueError:
                raise DeployError(f"--instances-subnet must be an IPv4 network such as 10.128.0.0/21, "
                                  f"got {self.instances_subnet!r}") from None
            if subnet.prefixlen > 24 or not subnet.is_private:
                raise DeployError(f"--instances-subnet must be a private network of at least a /24, got {subnet}")


def nats_names(options: Options) -> list[str]:
    """The NATS servers' stable names, which are also their service names in the stack."""
    return [f"nats-{i}" for i in range(1, options.nats_replicas + 1)]


def nats_urls(options: Options) -> str:
    scheme = "tls" if options.tls else "nats"
    return ",".join(f"{scheme}://{name}:{NATS_CLIENT_PORT}" for name in nats_names(options))


def instances_network(options: Options) -> str:
    """The overlay instances join (`settings.network` of the deployed catalogue)."""
    return f"{options.stack}_instances"


# addresses on the instances' overlay beside the instances: gateways and function hosts, one load balancer
# address per node, the network's own, broadcast and gateway addresses
OVERLAY_OVERHEAD = 64
SUBNET_POOL = ipaddress.IPv4Network("10.128.0.0/9")  # where a sized subnet is chosen (Docker's pool fills 10.0/16 up)


def instances_prefix(max_instances: int, functions_replicas: int = 2) -> int:
    """The prefix length of the instances' overlay for `max_instances` at once (the catalogue's global bound, which
    an `admin scale` cannot pass either), a quarter more for removed tasks that still hold their address while
    their replacements start, and the stack's own tasks; never smaller than a /24, at most a /16."""
    needed = max_instances + max_instances // 4 + functions_replicas + OVERLAY_OVERHEAD
    bits = max(8, math.ceil(math.log2(needed)))
    if bits > 16:
        raise DeployError(f"settings.max_instances = {max_instances} needs more than a /16 on the instances' overlay "
                          "(65,534 addresses); lower it")
    return 32 - bits


def usable_addresses(subnet: str) -> int:
    """Addresses a subnet gives tasks (less its network, broadcast and gateway addresses)."""
    return ipaddress.IPv4Network(subnet).num_addresses - 3


def choose_subnet(stack: str, prefix: int, taken: list[str]) -> str:
    """A block of `prefix` in SUBNET_POOL that overlaps none of `taken` (the engine's networks), starting at a
    place derived from the stack's name, so a second stack or a redeploy lands elsewhere or on the same one."""
    blocks = list(SUBNET_POOL.subnets(new_prefix=prefix))
    used = [ipaddress.IPv4Network(t, strict=False) for t in taken if ":" not in t]
    start = int(hashlib.sha256(stack.encode()).hexdigest(), 16) % len(blocks)
    for i in range(len(blocks)):
        block = blocks[(start + i) % len(blocks)]
        if not any(block.overlaps(u) for u in used):
            return str(block)
    raise DeployError(f"no free /{prefix} left in {SUBNET_POOL} for the instances' overlay: give --instances-subnet")


def network_subnets(found: dict[str, Any] | None) -> list[str]:
    """The IPv4 subnets of a network as the engine reports it."""
    configs = ((found or {}).get("IPAM") or {}).get("Config") or []
    return [c["Subnet"] for c in configs if c.get("Subnet") and ":" not in c["Subnet"]]


def network_problem(options: Options, network: str, found: dict[str, Any] | None,
                    max_instances: int | None = None) -> str | None:
    """Why an existing network of the stack cannot be kept (`docker stack deploy` keeps a network with its old
    options), or None: the instances' one must be internal, ours and hold `max_instances` (when given), and each
    must be encrypted as asked."""
    if found is None:
        return None
    problems = []
    if network == instances_network(options):
        if not found.get("Internal"):
            problems.append("is not internal (instances on it would reach the internet and the nodes)")
        owner = (found.get("Labels") or {}).get(LABEL_OWNER)
        if owner != options.stack:
            problems.append(f"has owner label {LABEL_OWNER}={owner!r}, not {options.stack!r}")
        subnets = network_subnets(found)
        room = sum(usable_addresses(s) for s in subnets)
        if max_instances is not None and subnets and room < max_instances + options.functions_replicas:
            problems.append(f"holds {room} addresses ({', '.join(subnets)}), fewer than settings.max_instances = "
                            f"{max_instances} instances and the stack's tasks")
    encrypted = "encrypted" in (found.get("Options") or {})
    if encrypted != options.encrypt_overlays:
        problems.append("is encrypted" if encrypted else "is not encrypted (--encrypt-overlays was given)")
    if not problems:
        return None
    return (f"the existing network {network} {' and '.join(problems)}; docker stack deploy keeps a network's old "
            f"options, so recreate it: swarmpool undeploy --stack {options.stack} (ends every session), then "
            f"deploy again")


def stack_networks(options: Options) -> list[str]:
    """The networks `docker stack deploy` creates for the stack, by their engine names."""
    return [f"{options.stack}_control", instances_network(options)]


def _manager() -> dict[str, Any]:
    return {"constraints": ["node.role == manager"]}


def compose(options: Options, files: dict[str, str], catalogue_at: float | None = None,
            subnet: str | None = None) -> dict[str, Any]:
    """The stack's compose file as a dict (JSON is YAML, so `docker stack deploy -c` reads it as it is).

    `files` maps each secret and config name (nats-1.conf, functions.json, gateway.json, catalogue.toml,
    and the TLS files when given) to the local file it is created from; `catalogue_at` is when this
    catalogue was first deployed (function hosts store it over an older one on the bus); `subnet` is the
    instances' overlay (None: the engine's default, a /24)."""
    options.check()
    names = nats_names(options)
    catalogue_config = f"{options.stack}_catalogue_{_digest(files['catalogue.toml'])}"
    run_secrets = ["nats-ca.pem"] if options.tls_ca else []

    def secret_list(*extra: str) -> list[dict[str, Any]]:
        return [{"source": s, "target": s, "mode": 0o400} for s in [*extra, *run_secrets]]

    services: dict[str, Any] = {}
    for name in names:
        service: dict[str, Any] = {
            "image": options.image,
            "hostname": name,
            "entrypoint": ["nats-server"],
            "command": ["-c", f"/run/secrets/{name}.conf"],
            "networks": ["control"],
            "volumes": [{"type": "volume", "source": f"{name}-data", "target": "/data"}],
            "secrets": secret_list(f"{name}.conf", *(["nats-cert.pem", "nats-key.pem"] if options.tls else [])),
            "deploy": {"replicas": 1, "endpoint_mode": "dnsrr", "placement": _manager(),
                       "restart_policy": {"condition": "any", "delay": "1s"}},
            "stop_grace_period": "20s",  # a JetStream server leaves its cluster cleanly
        }
        if options.nats_port is not None and name == names[0]:
            # host mode: one NATS server publishes for operators (the ingress mesh needs IPVS)
            service["ports"] = [{"target": NATS_CLIENT_PORT, "published": options.nats_port,
                                 "protocol": "tcp", "mode": "host"}]
        services[name] = service
    common = ["--catalogue", "/etc/swarmpool/catalogue.toml", "--namespace", options.stack,
              "--nats-url", nats_urls(options)]
    services["functions"] = {
        "image": options.image,
        "command": ["functions", *common, "--credentials", "/run/secrets/functions.json",
                    *(["--catalogue-deployed-at", f"{catalogue_at:.3f}"] if catalogue_at is not None else [])],
        # buckets and the event log with one copy per NATS server (bus/state.py stream_replicas)
        "environment": {"SWARMPOOL_NATS_REPLICAS": str(options.nats_replicas)},
        "networks": ["control", "instances"],
        "volumes": [{"type": "bind", "source": options.docker_socket, "target": "/var/run/docker.sock"}],
        "configs": [{"source": "catalogue", "target": "/etc/swarmpool/catalogue.toml", "mode": 0o444}],
        "secrets": secret_list("functions.json"),
        "deploy": {"replicas": options.functions_replicas, "endpoint_mode": "dnsrr", "placement": _manager(),
                   "restart_policy": {"condition": "any", "delay": "1s"}},
    }
    gateway_place = ({"constraints": [f"node.labels.{options.gateway_label} == true"]}
                     if options.gateway_label else _manager())
    services["gateway"] = {
        "image": options.image,
        # listens only where its node's published port arrives (docker_gwbridge, the default route), never on
        # the instances' overlay: an instance cannot reach the gateway's listener, past nginx's rules
        "command": ["gateway", *common, "--credentials", "/run/secrets/gateway.json",
                    "--host", "default-route", "--port", str(GATEWAY_PORT)],
        "networks": ["control", "instances"],
        "ports": [{"target": GATEWAY_PORT, "published": options.port, "protocol": "tcp", "mode": "host"}],
        "configs": [{"source": "catalogue", "target": "/etc/swarmpool/catalogue.toml", "mode": 0o444}],
        "secrets": secret_list("gateway.json"),
        "deploy": {"mode": "global", "endpoint_mode": "dnsrr", "placement": gateway_place,
                   "restart_policy": {"condition": "any", "delay": "1s"}},
    }
    services["guard"] = {
        "image": options.image,
        # on every node: closes in each local instance (rules in its own network namespace, through helper
        # containers of this image), then opens the port it is reached on (swarm/guard.py)
        "command": ["guard", "--namespace", options.stack, "--image", options.image],
        "networks": ["control"],  # it listens on nothing and talks only to its node's engine
        "volumes": [{"type": "bind", "source": options.docker_socket, "target": "/var/run/docker.sock"}],
        "deploy": {"mode": "global", "endpoint_mode": "dnsrr",
                   "restart_policy": {"condition": "any", "delay": "1s"}},
    }
    encrypted: dict[str, Any] = {"driver_opts": {"encrypted": ""}} if options.encrypt_overlays else {}
    secret_names = [f"{n}.conf" for n in names] + ["functions.json", "gateway.json"]
    secret_names += (["nats-cert.pem", "nats-key.pem"] if options.tls else []) + run_secrets
    return {
        "version": COMPOSE_VERSION,
        "services": services,
        "networks": {
            "control": {"driver": "overlay", **encrypted},
            # instances publish no port: gateways and function hosts reach them here by service name. Internal:
            # no docker_gwbridge for its tasks, so on every node an instance has no route to its node, the LAN,
            # the internet or the control network, and its DNS forwards no outside name (docs/design-network.md)
            "instances": {"driver": "overlay", "internal": True, "labels": {"swarmpool.owner": options.stack},
                          **({"ipam": {"config": [{"subnet": subnet}]}} if subnet else {}), **encrypted},
        },
        "volumes": {f"{n}-data": {} for n in names},
        # content-addressed names: a changed file is a new secret (secrets and configs are immutable)
        "secrets": {s: {"file": files[s], "name": f"{options.stack}_{_slug(s)}_{_digest(files[s])}"}
                    for s in secret_names},
        "configs": {"catalogue": {"file": files["catalogue.toml"], "name": catalogue_config}},
    }


def _slug(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_-]", "-", name)


def _digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:10]


def nats_config(options: Options, name: str, passwords: dict[str, str], route_password: str) -> dict[str, Any]:
    """One NATS server's configuration: JetStream, the role users of the stack's namespace, and the cluster
    routes by service name (dnsrr) with their own credentials."""
    config: dict[str, Any] = {
        "server_name": name,
        "listen": f"0.0.0.0:{NATS_CLIENT_PORT}",
        "jetstream": {"store_dir": "/data"},
        "authorization": {"users": server_users(passwords, [options.stack])},
    }
    if options.nats_replicas > 1:
        config["cluster"] = {
            "name": options.stack,
            "listen": f"0.0.0.0:{NATS_ROUTE_PORT}",
            "authorization": {"user": "route", "password": route_password},
            "routes": [f"nats://route:{route_password}@{other}:{NATS_ROUTE_PORT}"
                       for other in nats_names(options) if other != name],
        }
    if options.tls:
        tls: dict[str, Any] = {"cert_file": "/run/secrets/nats-cert.pem", "key_file": "/run/secrets/nats-key.pem"}
        if options.tls_ca:
            tls["ca_file"] = "/run/secrets/nats-ca.pem"
        config["tls"] = tls
    return config


def cluster_catalogue(text: str, options: Options, path: str = "<catalogue>") -> str:
    """The catalogue as deployed: validated, with instances on the stack's overlay and no published ports, and
    the calendar files it names written into it (`ics`): the hosts get only this one file."""
    # a bad file is a CatalogueError naming the field, before anything is created
    calendars = parse(text, path).calendars
    raw = tomllib.loads(text)
    for app in raw.get("apps", {}).values():
        app["calendar"] = [{**{k: v for k, v in source.items() if k != "file"}, "ics": calendars[source["file"]]}
                           if "file" in source else source for source in app.get("calendar", [])]
        if not app["calendar"]:
            del app["calendar"]
    for name, app in raw.get("apps", {}).items():
        if app.get("egress", "none") != "none":
            raise DeployError(f"{path}: apps.{name}.egress = {app['egress']!r} is not available on a cluster yet "
                              "(instances join an internal overlay: no egress at all); see docs/design-network.md")
    settings = dict(raw.get("settings", {}))
    settings["publish_ports"] = False
    settings["network"] = instances_network(options)
    settings["guard"] = True  # reached only once `swarmpool guard` has closed them in
    for name, app in raw.get("apps", {}).items():
        if app.get("port") == GUARD_PORT:
            raise DeployError(f"{path}: apps.{name}.port = {GUARD_PORT} is the port the guard opens instances on "
                              "in a cluster; use another")
    out = _toml_table("settings", settings)
    for name, app in raw.get("apps", {}).items():
        out += _toml_table(f"apps.{_toml_key(name)}", app)
    parse(out, path)
    return out


def _toml_key(key: str) -> str:
    return key if re.match(r"^[A-Za-z0-9_-]+$", key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise DeployError(f"cannot write {value!r} into the deployed catalogue")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise DeployError(f"cannot write {type(value).__name__} values into the deployed catalogue")


def _toml_table(name: str, table: dict[str, Any]) -> str:
    lines = [f"[{name}]"]
    for key, value in table.items():
        lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n\n"


# -- the state dir: credentials, secrets and the compose file of one stack ------------------------------------


@dataclass(frozen=True)
class Tls:
    cert: str | None = None
    key: str | None = None
    ca: str | None = None


def stack_dir(state_dir: str | Path, stack: str) -> Path:
    return Path(state_dir).expanduser() / "stacks" / stack


def instances_subnet(options: Options, max_instances: int, taken: list[str] = [],
                     existing: dict[str, Any] | None = None) -> str:
    """The instances' overlay: --instances-subnet, else the existing network's (a redeploy keeps it), else a free
    block sized for `max_instances` (`taken`: the engine's networks' subnets)."""
    if options.instances_subnet:
        return str(ipaddress.IPv4Network(options.instances_subnet))
    if kept := network_subnets(existing):
        return kept[0]
    return choose_subnet(options.stack, instances_prefix(max_instances, options.functions_replicas), taken)


def write_files(options: Options, state_dir: str | Path, catalogue_path: str, catalogue_text: str,
                tls: Tls, operator_host: str | None, taken: list[str] = [],
                existing: dict[str, Any] | None = None) -> tuple[Path, dict[str, str]]:
    """Everything the stack is created from, under the state dir (mode 0700): passwords generated once and
    reused (redeploys keep the same secrets), the NATS configs, the role credentials, the catalogue and the
    compose file (the instances' overlay sized for the catalogue: see `instances_subnet`). Returns the compose
    file's path and the files by secret/config name."""
    home = stack_dir(state_dir, options.stack)
    files_dir = home / "files"
    files_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.chmod(0o700)
    files_dir.chmod(0o700)
    passwords_file = home / "passwords.json"
    known = json.loads(passwords_file.read_text()) if passwords_file.exists() else {}
    passwords = {role: known.get(role) or secrets.token_urlsafe(24) for role in ROLES}
    route_password = known.get("route") or secrets.token_urlsafe(24)
    write_private(passwords_file, json.dumps({**passwords, "route": route_password}, indent=2) + "\n")

    files: dict[str, str] = {}

    def put(name: str, text: str | bytes) -> None:
        target = files_dir / name
        write_private(target, text)
        files[name] = str(target)

    for name in nats_names(options):
        put(f"{name}.conf", json.dumps(nats_config(options, name, passwords, route_password), indent=2) + "\n")
    subjects = Subjects(options.stack)
    ca_inside = "/run/secrets/nats-ca.pem" if tls.ca else None
    for role in ("functions", "gateway"):
        Access(user=user_name(role), password=passwords[role], url=nats_urls(options), ca=ca_inside).save(
            files_dir / f"{role}.json", subjects.inbox(role), f"swarmpool {role} (stack {options.stack})")
        files[f"{role}.json"] = str(files_dir / f"{role}.json")
    for name, source in (("nats-cert.pem", tls.cert), ("nats-key.pem", tls.key), ("nats-ca.pem", tls.ca)):
        if source:
            try:
                put(name, Path(source).expanduser().read_bytes())
            except OSError as err:
                raise DeployError(f"cannot read {source}: {err.strerror}") from None
    put("catalogue.toml", cluster_catalogue(catalogue_text, options, catalogue_path))
    catalogue_at = deployed_at(home, _digest(files["catalogue.toml"]))
    # the operator's own credentials, for `swarmpool admin|events --state-dir <this dir>`
    if options.nats_port is not None and operator_host:
        url = f"tls://{operator_host}:{options.nats_port}"
        Access(user=user_name("operator"), password=passwords["operator"], url=url,
               ca=str(Path(tls.ca).expanduser().resolve()) if tls.ca else None).save(
            home / "credentials" / "operator.json", subjects.inbox("operator"), f"swarmpool operator ({url})")
    compose_file = home / "compose.json"
    subnet = instances_subnet(options, parse(catalogue_text, catalogue_path).settings.max_instances, taken, existing)
    compose_file.write_text(json.dumps(compose(options, files, catalogue_at, subnet), indent=2) + "\n")
    return compose_file, files


def deployed_at(home: Path, digest: str) -> float:
    """When this catalogue (by digest) was first deployed from this state dir: kept while it is unchanged,
    so a redeploy of the same file (an image upgrade) neither restarts function hosts nor undoes a reload."""
    record = home / "catalogue-deployed.json"
    try:
        known = json.loads(record.read_text())
        if known.get("digest") == digest and isinstance(known.get("at"), (int, float)):
            return float(known["at"])
    except (OSError, ValueError, AttributeError):
        pass
    at = time.time()
    write_private(record, json.dumps({"digest": digest, "at": at}) + "\n")
    return at


def wait_for_gateway(addresses: list[str], port: int, timeout: float) -> str:
    """The first gateway URL whose /healthz answers 200, waiting up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for address in addresses:
            url = f"http://{address}:{port}/"
            try:
                with urllib.request.urlopen(url + "healthz", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError as err:
                last = str(err)
        time.sleep(0.5)
    raise DeployError(f"no gateway answered on port {port} of {', '.join(addresses) or 'any manager'} within "
                      f"{timeout:.0f} s ({last}); see `docker service ps` of the stack's services")


# -- the commands ---------------------------------------------------------------------------------------------


def options_from(args: Any) -> Options:
    from swarmpool.swarm.stack import engine_socket

    return Options(stack=args.stack, port=args.port, image=args.image or control_image(),
                   nats_replicas=args.nats_replicas, nats_port=args.nats_port,
                   docker_socket=args.docker_socket or engine_socket(),
                   functions_replicas=args.functions_replicas, gateway_label=args.gateway_label,
                   tls=bool(args.tls_cert), tls_ca=bool(args.tls_ca),
                   encrypt_overlays=bool(getattr(args, "encrypt_overlays", False)),
                   instances_subnet=getattr(args, "instances_subnet", None))


def deploy(args: Any) -> int:
    """`swarmpool deploy`: write the stack's files, then (unless --print) deploy it and wait for a gateway."""
    import sys

    from swarmpool.catalogue import CatalogueError, default_catalogue_path
    from swarmpool.swarm.model import SwarmError
    from swarmpool.swarm.stack import Stack

    catalogue_path = args.catalogue or str(default_catalogue_path())
    try:
        if bool(args.tls_cert) != bool(args.tls_key):
            raise DeployError("--tls-cert and --tls-key go together")
        options = options_from(args)
        options.check()
        text = Path(catalogue_path).read_text()
        stack = None if args.print else Stack(options.stack)
        hosts: list[str] = []
        taken: list[str] = []
        existing = None
        if stack is not None:
            stack.check_manager()
            max_instances = parse(text, catalogue_path).settings.max_instances
            for network in stack_networks(options):
                found = stack.network(network)
                problem = network_problem(options, network, found, max_instances)
                if problem:
                    raise DeployError(problem)
                if network == instances_network(options):
                    existing = found
            taken = stack.subnets()
            if not stack.has_image(options.image):
                raise DeployError(f"image {options.image} is not on this manager: build it with "
                                  "apps/control/build.sh (and load it on every manager), or push it to a registry")
            hosts = stack.manager_addresses()
        compose_file, _ = write_files(options, args.state_dir, catalogue_path, text,
                                      Tls(args.tls_cert, args.tls_key, args.tls_ca),
                                      args.operator_host or (hosts[0] if hosts else None), taken, existing)
        if stack is None:
            print(compose_file.read_text(), end="")
            print(f"# secrets and the catalogue are in {compose_file.parent}; deploy with:\n"
                  f"#   docker stack deploy --resolve-image never -c {compose_file} {options.stack}", file=sys.stderr)
            return 0
        stack.deploy(str(compose_file), registry_auth=args.with_registry_auth)
        print(f"stack {options.stack} deployed ({', '.join(sorted(stack.services()))}); waiting for a gateway",
              flush=True)
        url = wait_for_gateway(hosts, options.port, args.timeout)
    except (DeployError, CatalogueError, SwarmError, OSError) as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        return 2 if isinstance(err, (DeployError, CatalogueError)) else 1
    print(f"gateway: {url} (every manager{' labelled ' + options.gateway_label if options.gateway_label else ''} "
          f"answers on port {options.port})")
    print(next_steps(options, stack_dir(args.state_dir, options.stack)), end="")
    return 0


def next_steps(options: Options, home: Path) -> str:
    """What the operator does next, printed after a deploy."""
    lines = ["next steps:",
             f"  put TLS (nginx or a load balancer) in front of port {options.port} of every gateway node",
             f"  watch instances: docker service ls --filter label=swarmpool.owner={options.stack}"]
    operator = home / "credentials" / "operator.json"
    if operator.exists():
        lines += [f"  operator credentials: {operator}",
                  f"  status: swarmpool admin status --namespace {options.stack} --state-dir {home}",
                  f"  dashboard (prints a one-time login link): swarmpool dashboard --namespace {options.stack} "
                  f"--state-dir {home} --port 8001",
                  f"  a changed catalogue: deploy it again, or swarmpool admin reload FILE --namespace "
                  f"{options.stack} --state-dir {home}"]
    else:
        lines += ["  operator access (admin, reload, events, swarmpool dashboard) needs NATS published with TLS: "
                  "redeploy with --tls-cert/--tls-key and --nats-port",
                  "  a changed catalogue: deploy it again"]
    return "\n".join(lines) + "\n"


def undeploy(args: Any) -> int:
    """`swarmpool undeploy`: every instance of the stack (by label), then the stack and what it created."""
    import sys

    from swarmpool.swarm.model import SwarmError
    from swarmpool.swarm.stack import Stack, leftover_names

    if not _STACK.match(args.stack):
        print(f"swarmpool: stack name must match {_STACK.pattern}, got {args.stack!r}", file=sys.stderr)
        return 2
    stack = Stack(args.stack)
    try:
        stack.check_manager()
        left = stack.remove(args.timeout)
    except SwarmError as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        return 1
    finally:
        stack.close()
    if left:
        print(f"swarmpool: still there after {args.timeout:.0f} s: {leftover_names(left)}", file=sys.stderr)
        return 1
    print(f"stack {args.stack} removed: instances, services, secrets, configs, networks and volumes on this node")
    return 0
