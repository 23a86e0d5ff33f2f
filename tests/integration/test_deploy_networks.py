"""`swarmpool deploy` on this single-node swarm refuses a stack whose instances network already exists with other
options (`docker stack deploy` would keep them): a non-internal overlay left from before stays unused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import docker
import pytest

from tests.stack import echo_catalogue

pytestmark = pytest.mark.docker


def test_deploy_refuses_an_existing_instances_network_that_is_not_internal(
        tmp_path: Path, namespace: str, docker_client: docker.DockerClient) -> None:
    network = docker_client.networks.create(f"{namespace}_instances", driver="overlay", attachable=True,
                                            labels={"swarmpool.owner": namespace,
                                                    "com.docker.stack.namespace": namespace})
    try:
        catalogue = tmp_path / "catalogue.toml"
        catalogue.write_text(echo_catalogue(size=0))
        done = subprocess.run([sys.executable, "-m", "swarmpool.cli", "deploy", "--catalogue", str(catalogue),
                               "--stack", namespace, "--state-dir", str(tmp_path / "state"), "--nats-replicas", "1",
                               "--timeout", "5",
                               # an image this engine lacks: should the check be missed, nothing is deployed
                               "--image", "swarmpool/control:absent-in-this-test"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"{namespace}_instances is not internal" in done.stderr
        assert f"swarmpool undeploy --stack {namespace}" in done.stderr
        assert not docker_client.services.list(filters={"label": f"com.docker.stack.namespace={namespace}"})
    finally:
        network.remove()
