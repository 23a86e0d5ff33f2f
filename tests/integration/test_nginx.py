"""nginx front: a rendered config proxies HTTP and WebSockets to the gateway and rate-limits /launch/.

Runs the real nginx binary on a free loopback port in front of a small in-process aiohttp upstream.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from bench.support import wait_listening
from swarmpool.ids import new_instance_id

REPO = Path(__file__).resolve().parents[2]
RENDER = REPO / "nginx" / "render.py"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LAUNCH_BURST = 3

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def render(out: Path, *args: str) -> Path:
    subprocess.run([sys.executable, str(RENDER), "--out", str(out), *args], check=True, capture_output=True)
    return out / "nginx.conf"


def nginx_cmd(conf: Path, *extra: str) -> list[str]:
    out = conf.parent
    return [NGINX, "-c", str(conf), "-p", f"{out}/", "-e", str(out / "logs" / "error.log"), *extra]


def worker_user() -> list[str]:
    # As root nginx drops workers to `nobody`, who cannot enter pytest's 0700 tmp dirs.
    return ["--user", "root"] if os.geteuid() == 0 else []


# --- upstream: stands in for the gateway -------------------------------------------------------

launch_hits = web.AppKey("launch_hits", list[str])


async def echo_request(request: web.Request) -> web.StreamResponse:
    """Any path: answer what arrived, so a test can see what nginx forwarded."""
    return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})


async def launch(request: web.Request) -> web.StreamResponse:
    request.app[launch_hits].append(request.match_info["app"])
    return web.json_response({"launched": request.match_info["app"]})


async def websocket_echo(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(f"echo:{message.data}")
    return ws


@dataclass
class Upstream:
    port: int
    app: web.Application


@pytest_asyncio.fixture(scope="module")
async def upstream() -> AsyncIterator[Upstream]:
    app = web.Application()
    app[launch_hits] = []
    app.router.add_get("/launch/{app}", launch)
    app.router.add_get("/i/{id}/ws", websocket_echo)
    app.router.add_route("*", "/{tail:.*}", echo_request)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield Upstream(port=port, app=app)
    finally:
        await runner.cleanup()


# --- nginx ------------------------------------------------------------------------------------


@dataclass
class Front:
    url: str
    process: subprocess.Popen[bytes]
    out: Path


@contextmanager
def running_nginx(upstream: Upstream, out: Path, *options: str) -> Iterator[Front]:
    """nginx from a config rendered with `options`, in front of `upstream`, stopped afterwards."""
    assert os.path.exists(NGINX), f"nginx is not installed ({NGINX})"
    port = free_port()
    conf = render(
        out, "--http-only", "--listen-http", f"127.0.0.1:{port}", "--gateway", f"127.0.0.1:{upstream.port}",
        "--workers", "1", *options, *worker_user(),
    )
    subprocess.run(nginx_cmd(conf, "-t"), check=True, capture_output=True)
    process = subprocess.Popen(nginx_cmd(conf, "-g", "daemon off;"), stderr=subprocess.PIPE)
    try:
        wait_listening(port, process, "nginx", timeout=10)
        yield Front(url=f"http://127.0.0.1:{port}", process=process, out=out)
    finally:
        process.send_signal(signal.SIGTERM)  # fast shutdown: master stops its workers, then exits
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


@pytest.fixture(scope="module")
def front(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    with running_nginx(upstream, tmp_path_factory.mktemp("nginx"),
                       "--launch-rate", "1r/m", "--launch-burst", str(LAUNCH_BURST)) as running:
        yield running


@pytest.fixture(scope="module")
def default_front(upstream: Upstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    """nginx with the rendered defaults (rate limit and access log as an operator gets them)."""
    with running_nginx(upstream, tmp_path_factory.mktemp("nginx-default")) as running:
        yield running


# --- tests ------------------------------------------------------------------------------------


async def test_get_passes_through_with_client_address(front: Front) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{front.url}/i/abc/some/page?x=1", headers={"X-Forwarded-For": "203.0.113.9",
                                                                         "X-Forwarded-Host": "evil.example"}) as r:
            assert r.status == 200
            seen = await r.json()
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert seen["path"] == "/i/abc/some/page?x=1"
    assert headers["x-real-ip"] == "127.0.0.1"
    # nginx sets the address it saw, never appending to what the client claimed
    assert headers["x-forwarded-for"] == "127.0.0.1"
    assert headers["x-forwarded-proto"] == "http"
    assert headers["host"] == "127.0.0.1" and headers["x-forwarded-host"] == "127.0.0.1"
    assert "upgrade" not in headers


async def test_websocket_round_trip(front: Front) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{front.url}/i/abc/ws") as ws:
            for text in ("hello", "again"):
                await ws.send_str(text)
                message = await asyncio.wait_for(ws.receive(), timeout=5)
                assert message.type == aiohttp.WSMsgType.TEXT
                assert message.data == f"echo:{text}"


async def test_launch_burst_is_rate_limited(front: Front, upstream: Upstream) -> None:
    upstream.app[launch_hits].clear()
    async with aiohttp.ClientSession() as http:

        async def click() -> int:
            async with http.get(f"{front.url}/launch/demo", allow_redirects=False) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(click() for _ in range(LAUNCH_BURST + 7)))
    # rate 1r/m: the first request plus the burst pass, the rest are refused without reaching upstream
    assert statuses.count(200) == LAUNCH_BURST + 1
    assert statuses.count(429) == 6
    assert len(upstream.app[launch_hits]) == LAUNCH_BURST + 1
    # a person past the limit gets a page that tries again by itself, never cached
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{front.url}/launch/demo", allow_redirects=False) as r:
            assert r.status == 429
            assert 'http-equiv="refresh"' in await r.text()
            assert r.headers["Cache-Control"] == "no-store" and int(r.headers["Retry-After"]) > 0


async def test_a_class_behind_one_address_gets_in_with_the_default_limit(default_front: Front,
                                                                         upstream: Upstream) -> None:
    upstream.app[launch_hits].clear()
    clicks = 200  # a whole class behind one NAT address, all at once
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def click() -> int:
            async with http.get(f"{default_front.url}/launch/demo", allow_redirects=False) as r:
                await r.read()
                return r.status

        statuses = await asyncio.gather(*(click() for _ in range(clicks)))
    assert statuses.count(200) == clicks, sorted(set(statuses))
    assert len(upstream.app[launch_hits]) == clicks


async def test_access_log_never_stores_a_full_id(default_front: Front) -> None:
    ids = [new_instance_id() for _ in range(5)]
    requests = [
        (f"/i/{ids[0]}/hello?x=1", f"http://127.0.0.1/i/{ids[1]}/voila/render/app.ipynb"),
        (f"/i/{ids[2]}", f"https://{ids[3]}.apps.example.org/i/{ids[4]}/tree"),  # subdomain and path
        (f"/launch/demo?from={ids[4]}", ""),
    ]
    async with aiohttp.ClientSession() as http:
        for path, referer in requests:
            async with http.get(default_front.url + path, headers={"Referer": referer} if referer else {},
                                allow_redirects=False) as r:
                await r.read()
    log = default_front.out / "logs" / "access.log"
    deadline = time.monotonic() + 5  # nginx writes a line once its response is done: wait for the last one
    while "?from=" not in log.read_text() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    text = log.read_text()
    for instance_id in ids:
        assert instance_id not in text
        assert instance_id[:4] + "..." in text  # the log-safe prefix stays, so lines can be correlated
    assert "/voila/render/app.ipynb" in text and "apps.example.org" in text and "hello?x=1" in text


async def test_other_paths_are_not_rate_limited(front: Front) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(LAUNCH_BURST + 5):
            async with http.get(f"{front.url}/healthz") as r:
                assert r.status == 200


async def test_the_queues_waiting_pages_are_not_rate_limited(front: Front) -> None:
    """A class waiting in line behind one address refreshes its pages and holds their connections."""
    page = f"{front.url}/launch/demo/ticket/{new_instance_id()}"
    async with aiohttp.ClientSession() as http:
        for _ in range(LAUNCH_BURST + 5):
            async with http.get(page, allow_redirects=False) as r:
                assert r.status != 429
            async with http.get(page + "/wait", allow_redirects=False) as r:
                assert r.status != 429


def test_tls_config_is_valid(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=example.org",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    conf = render(
        tmp_path / "out", "--server-name", "example.org", "--listen", f"127.0.0.1:{free_port()}",
        "--listen-http", f"127.0.0.1:{free_port()}", "--gateway", "127.0.0.1:8000",
        "--cert", str(cert), "--key", str(key), *worker_user(),
    )
    result = subprocess.run(nginx_cmd(conf, "-t"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    text = (conf.parent / "swarmpool.conf").read_text()
    assert "return 301 https://$host:" in text  # non-443 port is kept in the redirect
    assert "ssl_certificate " + str(cert) in text
