"""`swarmpool guard`'s pure parts: the rules it installs inside an instance, which containers it closes in, and
that guarded instances are reached only through the port its last rule opens (no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmpool.bus.spec import AppSpec, Settings
from swarmpool.deploy import DeployError, Options, Tls, cluster_catalogue, write_files
from swarmpool.functions.lifecycle import instance_spec
from swarmpool.swarm.guard import CHAIN, Target, filter_rules, redirect_rule, script, target_of, to_guard
from swarmpool.swarm.model import GUARD_PORT, LABEL_GUARD_PORT
from swarmpool.swarm.services import labels as service_labels
from swarmpool.swarm.status import endpoint as task_endpoint

NS = "cls"


def labels(**extra: str) -> dict[str, str]:
    return {"swarmpool.owner": NS, "swarmpool.app": "echo", "swarmpool.id": "abcdef0123456789",
            "swarmpool.port": "8888", LABEL_GUARD_PORT: str(GUARD_PORT), **extra}


def test_rules_refuse_every_new_connection_out_but_loopback_and_replies() -> None:
    rules = filter_rules()
    assert rules[0] == ["-A", CHAIN, "-o", "lo", "-j", "ACCEPT"]
    assert rules[1] == ["-A", CHAIN, "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]
    assert [r[-1] if r[-2] != "--reject-with" else r[-3] for r in rules[2:]] == ["REJECT", "REJECT"]
    assert all("-d" not in r and "--dport" not in r for r in rules)  # nothing else allowed, whatever the address


def test_script_closes_both_ip_versions_before_opening_the_redirect_last() -> None:
    target = Target(container_id="c" * 64, instance_id="abcdef0123456789", app_port=8888, guard_port=GUARD_PORT)
    text = script(target)
    lines = text.splitlines()
    redirect = '"$V4" -w -A ' + " ".join(redirect_rule(target))
    assert lines[-2] == redirect and text.count(redirect) == 1  # the readiness signal comes after every rule
    assert f"--dport {GUARD_PORT} -j REDIRECT --to-ports 8888" in redirect
    for tool in ("V4", "V6"):
        assert f'"${tool}" -w -I OUTPUT 1 -j {CHAIN}' in text
        assert f'"${tool}" -w -A {CHAIN} -p tcp -j REJECT --reject-with tcp-reset' in text
        assert text.index(f'"${tool}" -w -I OUTPUT 1') < text.index(redirect)
    assert lines[0] == "set -eu"
    assert "already guarded; exit 0" in lines[2]  # idempotent: a redirect means the rules are in
    assert "if [ -e /proc/net/if_inet6 ]; then" in lines  # IPv6 skipped only where the kernel has none


def test_only_running_guarded_instances_of_the_namespace_are_targets() -> None:
    containers = [
        {"Id": "a", "Labels": labels()},
        {"Id": "b", "Labels": labels(**{"swarmpool.owner": "other"})},  # another stack's
        {"Id": "c", "Labels": {k: v for k, v in labels().items() if k != LABEL_GUARD_PORT}},  # published (up)
        {"Id": "d", "Labels": {"com.docker.stack.namespace": NS}},  # the stack's own gateway
        {"Id": "e", "Labels": labels(**{"swarmpool.port": "x"})},  # malformed
        {"Id": "f", "Labels": labels()},
    ]
    found = to_guard(containers, NS, done={"f"})
    assert found == [Target(container_id="a", instance_id="abcdef0123456789", app_port=8888, guard_port=GUARD_PORT)]


def test_an_inspected_container_is_read_from_its_config() -> None:
    assert target_of({"Id": "a", "Config": {"Labels": labels()}}, NS) is not None


def test_a_guarded_instance_is_reached_only_on_the_guard_port() -> None:
    def endpoint(spec: dict[str, object]) -> str:
        return task_endpoint({"Spec": {"Name": "cls-echo-x", **spec}}, {})

    assert endpoint({"Labels": labels()}) == f"cls-echo-x:{GUARD_PORT}"
    assert endpoint({"Labels": {"swarmpool.port": "8888"}}) == "cls-echo-x:8888"


def test_instances_are_guarded_on_a_cluster_only() -> None:
    app = AppSpec(name="echo", image="e", port=8888)
    cluster = Settings(publish_ports=False, network="cls_instances", guard=True)
    assert instance_spec(app, "abcdef0123456789", cluster).guard is True
    assert instance_spec(app, "abcdef0123456789", Settings()).guard is False
    spec = instance_spec(app, "abcdef0123456789", cluster)
    assert service_labels(NS, spec)[LABEL_GUARD_PORT] == str(GUARD_PORT)
    published = instance_spec(app, "abcdef0123456789", Settings(guard=True))  # publish_ports: the host filter
    assert LABEL_GUARD_PORT not in service_labels(NS, published)


CATALOGUE = """
[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
"""


def test_deploy_guards_every_node_and_the_catalogue_says_so(tmp_path: Path) -> None:
    options = Options(image="swarmpool/control:test", stack=NS, docker_socket="/run/{{.Node.Hostname}}/docker.sock")
    compose_file, _ = write_files(options, tmp_path, "cat.toml", CATALOGUE, Tls(), None)
    spec = json.loads(compose_file.read_text())
    guard = spec["services"]["guard"]
    assert guard["deploy"]["mode"] == "global" and "placement" not in guard["deploy"]  # every node, workers too
    assert guard["command"] == ["guard", "--namespace", NS, "--image", "swarmpool/control:test"]
    assert guard["volumes"] == [{"type": "bind", "source": "/run/{{.Node.Hostname}}/docker.sock",
                                 "target": "/var/run/docker.sock"}]
    assert "cap_add" not in guard and "instances" not in guard["networks"]  # its helpers hold NET_ADMIN, briefly
    assert "guard = true" in cluster_catalogue(CATALOGUE, options)


def test_an_app_on_the_guard_port_cannot_be_deployed() -> None:
    with pytest.raises(DeployError, match=f"apps.echo.port = {GUARD_PORT}"):
        cluster_catalogue(CATALOGUE.replace("8888", str(GUARD_PORT)), Options())
