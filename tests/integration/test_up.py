"""`swarmpool up`, the embedded default, as a newcomer runs it: a real process, then Ctrl-C."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import docker
import pytest

from swarmpool.natsd import free_port
from tests.stack import cli_process, echo_catalogue, wait_for

pytestmark = pytest.mark.docker


async def test_up_serves_clicks_and_cleans_up_on_sigint(tmp_path: Path, namespace: str, echo_image: str,
                                                        docker_client: docker.DockerClient) -> None:
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=2))
    port = free_port()
    async with AsyncExitStack() as stack:
        proc, lines = await cli_process(stack, "up", "--catalogue", str(catalogue), "--port", str(port),
                                        "--state-dir", str(tmp_path / "state"), "--namespace", namespace)
        await wait_for(lambda: any("swarmpool is up" in line for line in lines), timeout=60, what="startup")
        await wait_for(lambda: any("echo 2/2 ready" in line for line in lines), timeout=60,
                       what="warm-up progress to reach 2/2")
        assert (tmp_path / "state" / "jetstream").is_dir()  # embedded nats-server keeps JetStream there
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/launch/echo", allow_redirects=False) as r:
                assert r.status == 303
            async with http.get(f"http://127.0.0.1:{port}{r.headers['Location']}") as page:
                assert page.status == 200
        label = f"swarmpool.owner={namespace}"
        assert docker_client.services.list(filters={"label": label})
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
        # the output may still be on its way from the pipe
        await wait_for(lambda: any("removed" in line for line in lines), timeout=10, what="the removal reported")
        assert docker_client.services.list(filters={"label": label}) == []
