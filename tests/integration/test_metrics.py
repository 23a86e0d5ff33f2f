"""Metrics: a function host's /metrics port (pool gauges by record state, no instance ids), and the
gateway's /metrics serving the functions' registry too (as in `swarmpool up`)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import aiohttp
import pytest

from swarmpool.catalogue import parse
from swarmpool.launcher import serve_gateway
from swarmpool.natsd import free_port
from swarmpool.swarm.adapter import Swarm
from tests.stack import echo_catalogue, running_stack, wait_for

pytestmark = pytest.mark.docker
ID = re.compile(r"(?<![a-z2-7])[a-z2-7]{26}(?![a-z2-7])")


async def scrape(url: str) -> str | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(url) as response:
            return await response.text() if response.status == 200 else None
    except aiohttp.ClientError:
        return None


async def test_function_host_metrics_port(nats_server, namespace, echo_image, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    catalogue = tmp_path / "catalogue.toml"
    catalogue.write_text(echo_catalogue(size=1, max_=2))
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "swarmpool.cli", "functions", "--nats-url", nats_server.url, "--namespace", namespace,
        "--catalogue", str(catalogue), "--metrics-port", str(port), stdout=asyncio.subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        text = await wait_for(lambda: _ready_metric(url), timeout=90, what="one ready instance in the metrics")
        for state in ("ready", "starting", "claimed", "retiring", "failed"):
            assert f'swarmpool_pool_instances{{app="echo",state="{state}"}}' in text
        assert 'swarmpool_pool_target{app="echo"} 1.0' in text
        assert "swarmpool_time_to_ready_seconds_bucket" in text
        assert not ID.search(text)
    finally:
        proc.terminate()
        await proc.wait()
        swarm = Swarm(namespace)
        await swarm.remove_all()
        await swarm.close()


async def _ready_metric(url: str) -> str | None:
    text = await scrape(url)
    return text if text and 'swarmpool_pool_instances{app="echo",state="ready"} 1.0' in text else None


async def test_gateway_serves_the_functions_metrics(nats_server, namespace, echo_image) -> None:  # type: ignore[no-untyped-def]
    text = echo_catalogue(size=1, max_=2)
    async with running_stack(nats_server.url, namespace, text, docker=False) as s:
        await s.wait_ready(1)
        assert (await s.launch()).status == 303
        port = free_port()
        async with serve_gateway(s.nc, parse(text), namespace, "127.0.0.1", port,
                                 extra_metrics=(s.hosts[0].metrics.registry,)):
            body = await scrape(f"http://127.0.0.1:{port}/metrics")
        assert body is not None
        assert "swarmpool_gateway_launches_total" in body and "swarmpool_pool_instances{" in body
        assert 'swarmpool_claims_total{app="echo",result="claimed"} 1.0' in body
        assert 'swarmpool_claim_seconds_count{app="echo"} 1.0' in body
        assert not ID.search(body)
