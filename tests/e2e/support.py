"""Whole-stack helpers shared by the e2e tests and the benches: Voila catalogue, nginx front, Chromium.

Everything listens on 127.0.0.1 only; every process started here has one owner that stops it.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "e2e"
VOILA_IMAGE = "swarmpool/voila-demo:latest"
VOILA_APP = "voila-demo"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-background-networking", "--disable-gpu", "--disable-quic",
    "--no-first-run", "--disable-component-update", "--disable-sync",
    # loopback only: Voila's page asks cdn.jsdelivr.net for Font Awesome; never resolve or reach it
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]

FAST_SETTINGS = """
[settings]
tick_interval = 0.2
reconcile_interval = 1
heartbeat_interval = 0.5
claim_wait = 3
max_instances = 40
"""


def _replace_once(text: str, pattern: str, value: str) -> str:
    new, n = re.subn(pattern, value, text, count=1, flags=re.MULTILINE)
    if n != 1:
        raise ValueError(f"apps/voila-demo/catalogue.toml changed shape: no line matching {pattern!r}")
    return new


def voila_catalogue(*, size: int = 2, max_: int = 4, idle: str = "10m", grace: str = "2m",
                    lifetime: str = "2h", parallel: int = 4) -> str:
    """apps/voila-demo/catalogue.toml with fast clocks, a small pool and the given session timeouts."""
    text = (REPO / "apps" / "voila-demo" / "catalogue.toml").read_text()
    text = _replace_once(text, r"^size = \d+$", f"size = {size}\nmax_parallel_starts = {parallel}")
    text = _replace_once(text, r"^max = \d+$", f"max = {max_}")
    text = _replace_once(text, r'^idle_timeout = ".*"$', f'idle_timeout = "{idle}"')
    text = _replace_once(text, r'^disconnect_grace = ".*"$', f'disconnect_grace = "{grace}"')
    text = _replace_once(text, r'^max_lifetime = ".*"$', f'max_lifetime = "{lifetime}"')
    return FAST_SETTINGS + text


def ensure_voila_image() -> str:
    """The Voila demo image, built offline (apps/voila-demo/build.sh, about a minute) when missing."""
    present = subprocess.run(["docker", "image", "inspect", VOILA_IMAGE], capture_output=True).returncode == 0
    if not present:
        subprocess.run([str(REPO / "apps" / "voila-demo" / "build.sh")], check=True,
                       env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return VOILA_IMAGE


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def instance_id_of(url: str) -> str:
    """The instance id in a `/i/<id>/...` URL."""
    match = re.search(r"/i/([a-z2-7]{26})(?:/|$)", url)
    if match is None:
        raise AssertionError(f"not an instance URL: {url}")
    return match.group(1)


def voila_browser_check() -> ModuleType:
    """apps/voila-demo/browser_check.py (its folder name has a dash, so load it by path)."""
    import importlib.util

    path = REPO / "apps" / "voila-demo" / "browser_check.py"
    spec = importlib.util.spec_from_file_location("voila_browser_check", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- nginx ----


def render_nginx(out: Path, listen_port: int, gateway: str, *extra: str) -> Path:
    """Render the plain-HTTP nginx front (nginx/render.py) into `out`; return its nginx.conf."""
    user = ["--user", "root"] if os.geteuid() == 0 else []  # workers as nobody cannot enter 0700 tmp dirs
    subprocess.run(
        [sys.executable, str(REPO / "nginx" / "render.py"), "--out", str(out), "--http-only",
         "--listen-http", f"127.0.0.1:{listen_port}", "--gateway", gateway, "--workers", "1", *user, *extra],
        check=True, capture_output=True,
    )
    return out / "nginx.conf"


def _nginx_cmd(conf: Path, *extra: str) -> list[str]:
    out = conf.parent
    return [NGINX, "-c", str(conf), "-p", f"{out}/", "-e", str(out / "logs" / "error.log"), *extra]


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop one process we started (by its handle, never by name) and reap it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def nginx_front(out: Path, gateway: str, *extra: str) -> Iterator[str]:
    """Real nginx in the foreground on a free loopback port in front of `gateway`; yields its URL."""
    port = free_port()
    conf = render_nginx(out, port, gateway, *extra)
    subprocess.run(_nginx_cmd(conf, "-t"), check=True, capture_output=True)
    process = subprocess.Popen(_nginx_cmd(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, process, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)  # SIGTERM: fast shutdown, the master stops its workers, then exits


# ---- the whole stack behind nginx ----


@dataclass
class Front:
    """The swarmpool stack (functions + gateway, in process) with real nginx in front."""

    stack: Any  # tests.stack.Stack
    url: str  # nginx

    def launch_url(self, app: str = VOILA_APP) -> str:
        return f"{self.url}/launch/{app}"


@asynccontextmanager
async def voila_front(nats_url: str, namespace: str, catalogue: str, nginx_dir: Path) -> AsyncIterator[Front]:
    from tests.stack import running_stack

    async with running_stack(nats_url, namespace, catalogue) as stack:
        gateway = stack.url.removeprefix("http://")
        with nginx_front(nginx_dir, gateway) as url:
            yield Front(stack=stack, url=url)


# ---- browser ----


@asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """The Debian Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_voila(page: Any, url: str, *, timeout: float = 90.0) -> str:
    """Open the app (following redirects and the waiting room) until its widget shows; return the output text."""
    check = voila_browser_check()
    ms = timeout * 1000
    await page.goto(url, wait_until="domcontentloaded", timeout=ms)
    await page.wait_for_selector(check.HANDLE, state="visible", timeout=ms)
    await page.wait_for_selector(check.OUTPUT, state="visible", timeout=ms)
    return str(await page.inner_text(check.OUTPUT)).strip()

