"""Catalogue guardrails against the real engine and bus: a user that is root by name in its image (only the
image's /etc/passwd says so) is refused by `up` and by `admin reload` (exit 2, naming the field, nothing
changed); trusted, it loads, `admin status` shows the trust and the event log keeps it."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import docker
import msgspec
import pytest
import pytest_asyncio

from swarmpool.bus.messages import AdminEvent
from swarmpool.bus.state import CatalogueStore
from swarmpool.bus.subjects import Subjects
from swarmpool.natsd import free_port
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import InstanceSpec, SwarmError
from tests.docker_fixtures import new_instance_id
from bench.support import stop_child
from tests.integration.test_admin import admin, status_json
from tests.stack import echo_catalogue, running_stack

pytestmark = pytest.mark.docker


@pytest_asyncio.fixture
async def toor_image(docker_client: docker.DockerClient, echo_image: str, namespace: str) -> AsyncIterator[str]:
    """The echo image with a second name for uid 0 ("toor") in its /etc/passwd, made here and removed after."""
    name = f"swarmpool/echo-toor:{namespace}"

    def make() -> None:
        container = docker_client.containers.run(
            echo_image, ["sh", "-c", "echo toor:x:0:0:another root:/root:/bin/sh >> /etc/passwd"], user="0",
            entrypoint=[], detach=True, network_disabled=True)
        try:
            assert container.wait(timeout=60)["StatusCode"] == 0
            container.commit(*name.split(":"))
        finally:
            container.remove(force=True)

    await asyncio.to_thread(make)
    try:
        yield name
    finally:
        await asyncio.to_thread(docker_client.images.remove, name, force=True)


def toor_catalogue(image: str, trusted: bool) -> str:
    app = f'image = "{image}"\nuser = "toor"' + ('\ntrusted = ["user"]' if trusted else "")
    return echo_catalogue(size=0).replace('image = "swarmpool/echo:latest"', app)


async def test_reload_refuses_root_by_name_and_loads_it_trusted(nats_server, namespace, toor_image,  # type: ignore[no-untyped-def]
                                                               tmp_path) -> None:
    url = nats_server.url
    async with running_stack(url, namespace, echo_catalogue(size=0), gateway=False) as s:
        catalogues = await CatalogueStore.open(s.nc, Subjects(namespace))
        events = await s.nc.subscribe(Subjects(namespace).audit("trusted"))
        try:
            before = catalogues.current()  # none: the stack was started without a file to store
            explicit = tmp_path / "explicit.toml"
            explicit.write_text(echo_catalogue(size=0).replace("port = 8888", 'port = 8888\nuser = "0:0"'))
            code, out, err = await admin(url, namespace, "reload", str(explicit))
            assert code == 2 and out == "" and err.strip().endswith("at apps.echo.user"), err

            by_name = tmp_path / "by-name.toml"
            by_name.write_text(toor_catalogue(toor_image, trusted=False))
            code, out, err = await admin(url, namespace, "reload", str(by_name))  # only the image tells
            assert code == 2 and out == "", err
            assert f"swarmpool: bad catalogue: {by_name.resolve()}: user 'toor' is root (uid 0) in {toor_image}" in err
            assert err.strip().endswith("list 'user' in apps.echo.trusted to allow it at apps.echo.user")
            assert catalogues.current() == before and s.hosts[0].catalogue.apps["echo"].user is None
            assert (await status_json(url, namespace))["echo"]["trusted"] == []

            trusted = tmp_path / "trusted.toml"
            trusted.write_text(toor_catalogue(toor_image, trusted=True))
            code, out, err = await admin(url, namespace, "reload", str(trusted))
            assert code == 0, err
            assert (await status_json(url, namespace))["echo"]["trusted"] == ["user"]
            event = msgspec.json.decode((await events.next_msg(timeout=10)).data, type=AdminEvent)
            assert (event.verb, event.app) == ("trusted", "echo") and "user ('toor')" in event.reason
        finally:
            await events.unsubscribe()
            await catalogues.close()


async def test_up_refuses_root_by_name_before_starting_anything(namespace, toor_image, tmp_path,  # type: ignore[no-untyped-def]
                                                                docker_client) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(toor_catalogue(toor_image, trusted=False))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(catalogue), "--namespace", namespace,
        "--port", str(free_port()), "--dashboard-port", "0", "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # it started after all: stopped as by Ctrl-C, then killed
            await stop_child(proc, signal.SIGINT, timeout=60)
    assert proc.returncode == 2, out.decode() + err.decode()
    assert err.decode().strip().endswith("at apps.echo.user") and "'toor' is root (uid 0)" in err.decode()
    assert not (tmp_path / "state" / "jetstream").exists()  # no NATS was started
    assert docker_client.services.list(filters={"label": f"swarmpool.owner={namespace}"}) == []
    assert "packet filter installed" not in out.decode()
    assert docker_client.containers.list(all=True, filters={"label": f"swarmpool.owner={namespace}"}) == []


async def test_the_adapter_refuses_to_start_an_instance_as_root_by_name_unless_trusted(
        namespace: str, toor_image: str, docker_client: docker.DockerClient) -> None:
    """Where the catalogue's check never saw the image (a cluster's function host, a reload on a node without
    it), the service creation reads the image's /etc/passwd itself."""
    image_user = f"swarmpool/echo-toor:{namespace}-user"

    def commit_user() -> None:  # the same image, whose own USER is toor
        container = docker_client.containers.create(toor_image, ["true"], network_disabled=True)
        try:
            container.commit("swarmpool/echo-toor", f"{namespace}-user", changes=["USER toor"])
        finally:
            container.remove(force=True)

    await asyncio.to_thread(commit_user)
    swarm = Swarm(namespace)
    try:
        for spec in (InstanceSpec(app="echo", id=new_instance_id(), image=toor_image, port=8888, user="toor"),
                     InstanceSpec(app="echo", id=new_instance_id(), image=image_user, port=8888),
                     InstanceSpec(app="echo", id=new_instance_id(), image=toor_image, port=8888, user="00")):
            with pytest.raises(SwarmError, match=r"refused to start echo as root: user '(toor|00)' is uid 0 .*"
                                                 r"list 'user' in apps.echo.trusted"):
                await swarm.create(spec)
        assert docker_client.services.list(filters={"label": f"swarmpool.owner={namespace}"}) == []
        trusted = InstanceSpec(app="echo", id=new_instance_id(), image=toor_image, port=8888, user="toor",
                               trusted_user=True)
        service_id = await swarm.create(trusted)
        assert docker_client.api.inspect_service(service_id)["Spec"]["TaskTemplate"]["ContainerSpec"]["User"] == "toor"
    finally:
        await swarm.remove_all()
        await swarm.close()
        await asyncio.to_thread(docker_client.images.remove, image_user, force=True)


async def test_up_refuses_a_network_named_as_the_instances_overlay_that_is_an_operators_bridge(
        namespace: str, echo_image: str, tmp_path: Path, docker_client: docker.DockerClient) -> None:
    """No packet filter guards instances on a network: the name alone must not be what lets it through."""
    bridge = await asyncio.to_thread(docker_client.networks.create, f"{namespace}_instances", driver="bridge",
                                     labels={"swarmpool.owner": namespace})
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=1).replace(
        "[settings]", f'[settings]\nnetwork = "{namespace}_instances"\npublish_ports = false\nguard = true', 1))
    assert f'network = "{namespace}_instances"' in catalogue.read_text()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(catalogue), "--namespace", namespace,
        "--port", str(free_port()), "--dashboard-port", "0", "--state-dir", str(tmp_path / "state"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(90):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # it started after all: stopped as by Ctrl-C, then killed
            await stop_child(proc, signal.SIGINT, timeout=60)
        await asyncio.to_thread(bridge.remove)
    assert proc.returncode == 2, out.decode() + err.decode()
    assert err.decode().strip().endswith("at settings.network"), err.decode()
    assert f"network '{namespace}_instances' is not internal" in err.decode()
    assert docker_client.services.list(filters={"label": f"swarmpool.owner={namespace}"}) == []
