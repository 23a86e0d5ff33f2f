"""The stack `swarmpool deploy` writes: compose file, NATS cluster configs, the deployed catalogue (pure, no Docker)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from swarmpool.bus.roles import Access
from swarmpool.catalogue import CatalogueError, parse
from swarmpool.deploy import DeployError, Options, Tls, cluster_catalogue, compose, nats_config, write_files
from swarmpool.swarm.stack import engine_socket

CATALOGUE = """
[settings]
reconcile_interval = "2s"

[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
env = { GREETING = "hi \\"there\\"" }
[apps.echo.probe]
path = "healthz"
[apps.echo.pool]
size = 3
"""


def stack(tmp_path: Path, **kw: object) -> tuple[dict, dict[str, str]]:
    options = Options(image="swarmpool/control:test", **kw)  # type: ignore[arg-type]
    compose_file, files = write_files(options, tmp_path, "cat.toml", CATALOGUE, Tls(), None)
    return json.loads(compose_file.read_text()), files


def test_three_nats_servers_with_stable_names_on_managers_by_dnsrr(tmp_path: Path) -> None:
    spec, files = stack(tmp_path)
    for name in ("nats-1", "nats-2", "nats-3"):
        service = spec["services"][name]
        assert service["deploy"]["endpoint_mode"] == "dnsrr"
        assert service["deploy"]["placement"]["constraints"] == ["node.role == manager"]
        assert service["command"] == ["-c", f"/run/secrets/{name}.conf"]
        config = json.loads(Path(files[f"{name}.conf"]).read_text())
        assert config["server_name"] == name and config["jetstream"] == {"store_dir": "/data"}
        routes = config["cluster"]["routes"]
        assert sorted(r.rsplit("@", 1)[1] for r in routes) == sorted(f"{o}:6222" for o in
                                                                       {"nats-1", "nats-2", "nats-3"} - {name})
        assert {u["user"] for u in config["authorization"]["users"]} == {
            "swarmpool-functions", "swarmpool-gateway", "swarmpool-operator"}
        assert "ports" not in service  # NATS stays inside the swarm unless --nats-port (with TLS)


def test_one_nats_server_has_no_cluster() -> None:
    config = nats_config(Options(nats_replicas=1), "nats-1", {"functions": "x"}, "r")
    assert "cluster" not in config


def test_functions_mount_the_deploying_engines_socket_and_gateways_publish_in_host_mode(tmp_path: Path) -> None:
    spec, _ = stack(tmp_path, docker_socket="/var/lib/test-engine/docker.sock", port=18000, stack="cls")
    functions = spec["services"]["functions"]
    assert functions["deploy"]["replicas"] == 2
    assert functions["volumes"] == [{"type": "bind", "source": "/var/lib/test-engine/docker.sock",
                                     "target": "/var/run/docker.sock"}]
    assert "--namespace" in functions["command"] and "cls" in functions["command"]
    gateway = spec["services"]["gateway"]
    assert gateway["deploy"]["mode"] == "global"
    assert gateway["ports"] == [{"target": 8000, "published": 18000, "protocol": "tcp", "mode": "host"}]
    assert set(gateway["networks"]) == {"control", "instances"}
    assert spec["networks"]["instances"]["driver"] == "overlay"


def test_gateway_label_places_gateways(tmp_path: Path) -> None:
    spec, _ = stack(tmp_path, gateway_label="swarmpool.gateway")
    assert spec["services"]["gateway"]["deploy"]["placement"]["constraints"] == [
        "node.labels.swarmpool.gateway == true"]


def test_secrets_are_content_addressed_and_reused_on_redeploy(tmp_path: Path) -> None:
    first, files = stack(tmp_path)
    second, _ = stack(tmp_path)
    assert first["secrets"] == second["secrets"]  # same passwords: a redeploy changes nothing
    assert all(name.startswith("sp_") for name in (s["name"] for s in first["secrets"].values()))
    assert all(Path(f).stat().st_mode & 0o077 == 0 for f in files.values())
    access = Access.load(files["gateway.json"])
    assert access.url == "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"


def test_deployed_catalogue_puts_instances_on_the_overlay_without_ports() -> None:
    text = cluster_catalogue(CATALOGUE, Options(stack="cls"))
    catalogue = parse(text)
    assert catalogue.settings.publish_ports is False
    assert catalogue.settings.network == "cls_instances"
    assert catalogue.settings.reconcile_interval == 2.0
    assert tomllib.loads(text)["apps"]["echo"]["env"] == {"GREETING": 'hi "there"'}


@pytest.mark.parametrize("options, problem", [
    (Options(stack="Bad-Name"), "stack name"),
    (Options(stack="averyveryverylongname"), "stack name"),
    (Options(nats_replicas=2), "nats-replicas"),
    (Options(port=0), "--port"),
    (Options(nats_port=4222), "tls-cert"),
    (Options(docker_socket="docker.sock"), "absolute"),
])
def test_bad_options_are_clear_errors(options: Options, problem: str) -> None:
    with pytest.raises(DeployError, match=problem):
        options.check()


def test_bad_catalogue_names_the_field() -> None:
    with pytest.raises(CatalogueError, match="apps.echo.port"):
        cluster_catalogue(CATALOGUE.replace("port = 8888", 'port = "x"'), Options())


def test_tls_wiring(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text(name)
    options = Options(tls=True, tls_ca=True, nats_port=14222, image="i")
    compose_file, files = write_files(options, tmp_path / "state", "c", CATALOGUE,
                                      Tls(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"),
                                          str(tmp_path / "ca.pem")), "10.9.0.2")
    spec = json.loads(compose_file.read_text())
    config = json.loads(Path(files["nats-1.conf"]).read_text())
    assert config["tls"]["ca_file"] == "/run/secrets/nats-ca.pem"
    assert spec["services"]["nats-1"]["ports"][0]["published"] == 14222
    assert Access.load(files["functions.json"]).url.startswith("tls://nats-1:4222")
    operator = Access.load(tmp_path / "state" / "stacks" / "sp" / "credentials" / "operator.json")
    assert operator.url == "tls://10.9.0.2:14222" and operator.ca == str(tmp_path / "ca.pem")


def test_engine_socket_comes_from_docker_host() -> None:
    assert engine_socket("unix:///var/lib/x/docker.sock") == "/var/lib/x/docker.sock"
    assert engine_socket("") == "/var/run/docker.sock"


def test_compose_needs_every_file() -> None:
    with pytest.raises(KeyError):
        compose(Options(), {})


@pytest.mark.parametrize(("found", "encrypt", "problem"), [
    (None, False, None),  # not there yet: the deploy creates it
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp"}, "Options": {}}, False, None),
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp"}, "Options": {"encrypted": ""}}, True, None),
    ({"Internal": False, "Labels": {"swarmpool.owner": "sp"}, "Options": {}}, False, "is not internal"),
    ({"Internal": True, "Labels": {}, "Options": {}}, False, "owner label swarmpool.owner=None, not 'sp'"),
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp2"}, "Options": {}}, False, "'sp2', not 'sp'"),
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp"}, "Options": {}}, True, "is not encrypted"),
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp"}, "Options": {"encrypted": ""}}, False, "is encrypted"),
])
def test_an_existing_instances_network_is_kept_only_internal_ours_and_encrypted_as_asked(
        found: dict | None, encrypt: bool, problem: str | None) -> None:
    from swarmpool.deploy import network_problem

    options = Options(stack="sp", encrypt_overlays=encrypt)
    said = network_problem(options, "sp_instances", found)
    if problem is None:
        assert said is None
    else:
        assert said is not None and problem in said and "sp_instances" in said
        assert "swarmpool undeploy --stack sp" in said and "deploy again" in said


def test_the_networks_a_deploy_creates_pass_the_check_on_a_redeploy(tmp_path: Path) -> None:
    from swarmpool.deploy import network_problem, stack_networks

    for encrypt in (False, True):
        options = Options(image="swarmpool/control:test", encrypt_overlays=encrypt)
        networks = stack(tmp_path, encrypt_overlays=encrypt)[0]["networks"]
        for name in stack_networks(options):  # as the engine reports what `docker stack deploy` created
            spec = networks[name.split("_", 1)[1]]
            found = {"Internal": spec.get("internal", False), "Labels": spec.get("labels", {}),
                     "Options": spec.get("driver_opts", {})}
            assert network_problem(options, name, found) is None
        assert network_problem(options, "sp_control", {"Options": {}} if encrypt else {"Options": {"encrypted": ""}})


@pytest.mark.parametrize(("max_instances", "prefix"), [
    (1, 24), (100, 24), (150, 24),  # a /24 (253 addresses) holds them with room to spare
    (200, 23), (400, 22), (500, 22), (1000, 21), (3000, 20), (50_000, 16)])
def test_the_instances_overlay_is_sized_for_max_instances(max_instances: int, prefix: int) -> None:
    from swarmpool.deploy import instances_prefix, usable_addresses

    assert instances_prefix(max_instances) == prefix
    subnet = f"10.128.0.0/{prefix}"
    assert usable_addresses(subnet) >= max_instances + max_instances // 4 + 2  # removals overlap with starts


def test_too_many_instances_for_one_overlay_is_a_clear_error() -> None:
    from swarmpool.deploy import instances_prefix

    with pytest.raises(DeployError, match="max_instances = 60000"):
        instances_prefix(60_000)


def test_a_deploy_writes_an_overlay_for_the_catalogues_max_instances(tmp_path: Path) -> None:
    import ipaddress

    from swarmpool.deploy import SUBNET_POOL

    options = Options(image="swarmpool/control:test")
    big = CATALOGUE.replace('[settings]\n', '[settings]\nmax_instances = 1000\n')
    compose_file, _ = write_files(options, tmp_path, "cat.toml", big, Tls(), None)
    ipam = json.loads(compose_file.read_text())["networks"]["instances"]["ipam"]["config"]
    subnet = ipaddress.IPv4Network(ipam[0]["subnet"])
    assert subnet.prefixlen == 21 and subnet.subnet_of(SUBNET_POOL)
    # the engine's networks are avoided; an existing overlay is kept; --instances-subnet wins
    compose_file, _ = write_files(options, tmp_path, "cat.toml", big, Tls(), None, taken=[str(subnet), "10.0.0.0/16"])
    other = json.loads(compose_file.read_text())["networks"]["instances"]["ipam"]["config"][0]["subnet"]
    assert other != str(subnet) and not ipaddress.IPv4Network(other).overlaps(subnet)
    existing = {"IPAM": {"Config": [{"Subnet": "10.200.0.0/21"}]}}
    compose_file, _ = write_files(options, tmp_path, "cat.toml", big, Tls(), None, existing=existing)
    assert json.loads(compose_file.read_text())["networks"]["instances"]["ipam"]["config"] == [{"subnet": "10.200.0.0/21"}]
    chosen = Options(image="swarmpool/control:test", instances_subnet="172.30.0.0/20")
    compose_file, _ = write_files(chosen, tmp_path, "cat.toml", big, Tls(), None, existing=existing)
    assert json.loads(compose_file.read_text())["networks"]["instances"]["ipam"]["config"] == [{"subnet": "172.30.0.0/20"}]


@pytest.mark.parametrize("subnet", ["10.1.0.0/25", "8.8.0.0/16", "nonsense"])
def test_a_bad_instances_subnet_is_refused(subnet: str) -> None:
    with pytest.raises(DeployError, match="--instances-subnet"):
        Options(instances_subnet=subnet).check()


def test_an_existing_overlay_too_small_for_max_instances_is_refused() -> None:
    from swarmpool.deploy import network_problem

    found = {"Internal": True, "Labels": {"swarmpool.owner": "sp"}, "Options": {},
             "IPAM": {"Config": [{"Subnet": "10.0.5.0/24"}]}}
    assert network_problem(Options(), "sp_instances", found, 200) is None  # 253 addresses: today's stacks stay
    said = network_problem(Options(), "sp_instances", found, 1000)
    assert said is not None and "holds 253 addresses" in said and "swarmpool undeploy --stack sp" in said
