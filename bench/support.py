"""What the benches need around a running swarmpool: catalogues, nginx in front, Chromium, process care.

The benches never import the tests; these helpers are their own (everything on 127.0.0.1 only,
every process started here has one owner that stops it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from yarl import URL

from swarmpool.ids import instance_prefix, valid_id
from swarmpool.natsd import free_port

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
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


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank) of `values`; nan when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def print_rows(rows: list[tuple[str, list[float]]], decimals: int = 1) -> None:
    """The benches' table: each round's median and p99 (ms), and its median against the first round's."""
    width = max(len("round"), *(len(name) for name, _ in rows))
    base = statistics.median(rows[0][1])
    print(f"{'round':{width}} {'median ms':>10} {'p99 ms':>8} {'x baseline':>11}")
    for name, values in rows:
        med = statistics.median(values)
        print(f"{name:{width}} {med:10.3f} {pct(values, 99):8.3f} {med / base:11.{decimals}f}")


# ---- catalogues ----


def echo_catalogue(*, size: int = 2, max_: int | None = None, idle: str = "10m", grace: str = "2m",
                   lifetime: str = "2h", parallel: int = 8, extra: str = "", settle_cap: float | None = None) -> str:
    """A catalogue with one app, the echo test app (apps/echo), and fast clocks (benches and tests); `settle_cap`:
    how long a claim's refill waits for its page (the default 10 s unless given: tests whose clients never load an
    HTML page, and whose subject is not settling, shorten it)."""
    settle = "" if settle_cap is None else f"settle_cap = {settle_cap}\n"
    return f"""
[settings]
tick_interval = 0.2
reconcile_interval = 1
heartbeat_interval = 0.5
claim_wait = 1.5
refill_delay = 0.2
{settle}max_instances = 120

[apps.echo]
title = "Echo"
image = "swarmpool/echo:latest"
port = 8888
deep_link = "hello"
[apps.echo.probe]
path = "healthz"
log_marker = "echo ready"
timeout = "60s"
interval = 0.1
[apps.echo.pool]
size = {size}
max = {max_ if max_ is not None else size * 3}
max_parallel_starts = {parallel}
[apps.echo.session]
idle_timeout = "{idle}"
disconnect_grace = "{grace}"
max_lifetime = "{lifetime}"
[apps.echo.limits]
memory = "96m"
{extra}
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
    """The Voila demo image, built offline (apps/voila-demo/build.sh, about a minute) when missing or built
    from other inputs than the repository's (the script says which, and skips in a second otherwise)."""
    subprocess.run([str(REPO / "apps" / "voila-demo" / "build.sh")], check=True,
                   env={**os.environ, "DOCKER_BUILDKIT": "0"})
    return VOILA_IMAGE


def instance_id_of(url: str) -> str:
    """The instance id in a `/i/<id>/...` URL (absolute or a bare path)."""
    path = URL(url).path
    for part in path.split("/"):
        if valid_id(part) and (path + "/").startswith(instance_prefix(part)):
            return part
    raise ValueError(f"not an instance URL: {url}")


# ---- processes ----


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Stop one process we started (by its handle, never by name) and reap it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def stop_child(process: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
    """`stop_process` for a process started with asyncio: signal it, wait, kill it if it hangs; reaped."""
    if process.returncode is None:
        process.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


def wait_listening(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    """Return once `process` listens on 127.0.0.1:`port`; fail if it exits first or after `timeout`."""
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


# ---- nginx ----


def _render_nginx(out: Path, listen_port: int, gateway: str, *extra: str) -> Path:
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


@contextmanager
def nginx_front(out: Path, gateway: str, *extra: str) -> Iterator[str]:
    """Real nginx in the foreground on a free loopback port in front of `gateway`; yields its URL."""
    port = free_port()
    conf = _render_nginx(out, port, gateway, *extra)
    subprocess.run(_nginx_cmd(conf, "-t"), check=True, capture_output=True)
    process = subprocess.Popen(_nginx_cmd(conf, "-g", "daemon off;"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_listening(port, process, "nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)  # SIGTERM: fast shutdown, the master stops its workers, then exits


# ---- browser ----


# Chromium aborts a navigation under way when the host's network interfaces change (net::ERR_NETWORK_CHANGED): on a
# machine that starts containers, Docker adds and removes bridges and veths all the time (tests on parallel workers,
# a bench's own starts). A student's browser never sees that host; the navigation is simply asked again.
NETWORK_CHANGED = "net::ERR_NETWORK_CHANGED"
NAVIGATION_TRIES = 3


async def goto(page: Any, url: str, **options: Any) -> Any:
    """page.goto(url, **options), asked again (up to NAVIGATION_TRIES in all) when the host's interfaces changed."""
    for attempt in range(1, NAVIGATION_TRIES + 1):
        try:
            return await page.goto(url, **options)
        except Exception as e:  # playwright's Error: the module is imported lazily (chromium below)
            if NETWORK_CHANGED not in str(e) or attempt == NAVIGATION_TRIES:
                raise
            log.warning("navigation to %s aborted by a change of the host's interfaces; asking again", url)
    raise AssertionError("unreachable")


def kernel_message(payload: str | bytes) -> dict[str, Any]:
    """A kernel WebSocket frame as {channel, header, content}: JSON text, or jupyter_server's binary
    v1.kernel.websocket.jupyter.org framing (a count of offsets, the offsets, then channel, header,
    parent header, metadata, content and buffers)."""
    if isinstance(payload, str):
        msg = json.loads(payload)
        return {"channel": msg.get("channel", ""), "header": msg.get("header", {}), "content": msg.get("content", {})}
    count = int.from_bytes(payload[:8], "little")
    offsets = [int.from_bytes(payload[8 + 8 * i:16 + 8 * i], "little") for i in range(count)]
    parts = [payload[offsets[i]:offsets[i + 1]] for i in range(min(count - 1, 5))]
    return {"channel": parts[0].decode(), "header": json.loads(parts[1]), "content": json.loads(parts[4])}


@asynccontextmanager
async def chromium(*extra_args: str) -> AsyncIterator[Any]:
    """The Debian Chromium driven by Playwright (never a downloaded browser)."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, *extra_args])
        try:
            yield browser
        finally:
            await browser.close()


def class_catalogue(*, size: int, max_: int, settings: str = "") -> str:
    """The Voila demo exactly as apps/catalogue.toml declares it (static_paths, settle_on), alone,
    with a pool of `size` (at most `max_`) and fast clocks; `settings` lines go into [settings]."""
    text = (REPO / "apps" / "catalogue.toml").read_text()
    start = text.index(f"[apps.{VOILA_APP}]")
    following = re.compile(r"^\[apps\.(?!" + re.escape(VOILA_APP) + r"[.\]])", re.MULTILINE).search(text, start + 1)
    app = text[start:following.start() if following else len(text)]
    app = re.sub(r'^build = .*\n', "", app, flags=re.MULTILINE)  # the benches build it first (ensure_voila_image)
    app = _replace_once(app, r"^size = \d+$", f"size = {size}")
    app = _replace_once(app, r"^max = \d+$", f"max = {max_}")
    head = FAST_SETTINGS.replace("max_instances = 40\n", f"max_instances = {max_ + 4}\n{settings}")
    return head + "\n" + app


# ---- the Pluto demo (apps/pluto-demo) ----

# the tag build.sh builds (SWARMPOOL_PLUTO_IMAGE overrides both: a variant under test)
PLUTO_IMAGE = os.environ.get("SWARMPOOL_PLUTO_IMAGE", "swarmpool/pluto-demo:latest")
PLUTO_APP = "pluto-demo"
PLUTO_OUTPUT = "#sp-result .sp-value"  # the notebook's Julia-computed output ("After 20 years at 5.0% growth: ...")
PLUTO_SLIDER = "pluto-cell input[type=range]"
# the executed notebook is on screen: every cell came over the WebSocket, none is running or queued
PLUTO_SETTLED = """(output) => {
    const cells = document.querySelectorAll('pluto-cell');
    return cells.length >= 6 && document.querySelectorAll('pluto-cell.running, pluto-cell.queued').length === 0
        && document.querySelector(output) !== null;
}"""
LOCAL = ("http://127.0.0.1", "ws://127.0.0.1", "http://localhost", "ws://localhost", "data:", "blob:", "about:")


class PlutoImageMissing(RuntimeError):
    """The Pluto image is not there and apps/pluto-demo/build.sh could not build it (its words)."""


def ensure_pluto_image() -> str:
    """The Pluto demo image, built offline (apps/pluto-demo/build.sh: minutes the first time) when missing."""
    present = subprocess.run(["docker", "image", "inspect", PLUTO_IMAGE], capture_output=True).returncode == 0
    if not present:
        done = subprocess.run([str(REPO / "apps" / "pluto-demo" / "build.sh")], capture_output=True, text=True,
                              env={**os.environ, "DOCKER_BUILDKIT": "0"})
        if done.returncode != 0:
            raise PlutoImageMissing(f"apps/pluto-demo/build.sh failed (exit {done.returncode}): "
                                    + (done.stdout + done.stderr).strip()[-2000:])
    return PLUTO_IMAGE


def pluto_catalogue(*, size: int = 1, max_: int = 2, parallel: int = 1) -> str:
    """The Pluto demo exactly as apps/catalogue.toml declares it, alone, with a pool of `size` and fast clocks."""
    text = (REPO / "apps" / "catalogue.toml").read_text()
    start = text.index(f"[apps.{PLUTO_APP}]")
    following = re.compile(r"^\[apps\.(?!" + re.escape(PLUTO_APP) + r"[.\]])", re.MULTILINE).search(text, start + 1)
    app = text[start:following.start() if following else len(text)]
    app = re.sub(r'^build = .*\n', "", app, flags=re.MULTILINE)
    app = _replace_once(app, r'^image = ".*"$', f'image = "{PLUTO_IMAGE}"')
    app = _replace_once(app, r"^size = \d+$", f"size = {size}")
    app = _replace_once(app, r"^max = \d+$", f"max = {max_}")
    app = _replace_once(app, r"^max_parallel_starts = \d+(.*)$", f"max_parallel_starts = {parallel}")
    head = FAST_SETTINGS.replace("max_instances = 40\n", f"max_instances = {max_ + 2}\n")
    return head + "\n" + app


async def local_only(context: Any) -> list[str]:
    """Refuse every request of a browser context that would leave the machine; the returned list collects
    their URLs (a test fails on any). WebSockets are checked as they open."""
    outside: list[str] = []

    async def guard(route: Any) -> None:
        if route.request.url.startswith(LOCAL):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    await context.route("**/*", guard)
    context.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
    context.on("page", lambda page: page.on(
        "websocket", lambda ws: None if ws.url.startswith(LOCAL) else outside.append(ws.url)))
    return outside


def dead_proxy_args() -> list[str]:
    """Chromium flags that keep every request on this machine without intercepting any: all but loopback goes
    to a proxy at a free loopback port nobody listens on (the request fails there; Chromium never proxies
    loopback), and host names resolve to nothing. Pair with `record_outside`, which fails the run on any."""
    return [f"--proxy-server=http://127.0.0.1:{free_port()}"]


def record_outside(context: Any) -> list[str]:
    """Record (without intercepting: no Playwright routing, no cost per request) every request and WebSocket
    of a browser context that is not for this machine; the returned list collects their URLs."""
    outside: list[str] = []
    context.on("request", lambda r: None if r.url.startswith(LOCAL) else outside.append(r.url))
    context.on("page", lambda page: page.on(
        "websocket", lambda ws: None if ws.url.startswith(LOCAL) else outside.append(ws.url)))
    return outside


async def open_pluto(page: Any, url: str, *, timeout: float = 60.0) -> str:
    """Open the Pluto app (redirects, waiting room) until the executed notebook has settled; its output text."""
    ms = timeout * 1000
    await goto(page, url, wait_until="domcontentloaded", timeout=ms)
    await page.wait_for_function(PLUTO_SETTLED, arg=PLUTO_OUTPUT, timeout=ms, polling=50)
    return str(await page.inner_text(PLUTO_OUTPUT)).strip()


async def move_pluto_slider(page: Any, key: str = "ArrowRight", *, timeout: float = 60.0) -> tuple[float, str]:
    """Move the slider one step as a student does (keyboard), until Julia's new output shows: (seconds, text)."""
    before = str(await page.inner_text(PLUTO_OUTPUT)).strip()
    await page.focus(PLUTO_SLIDER)
    started = time.monotonic()
    await page.keyboard.press(key)
    await page.wait_for_function(
        "([sel, before]) => { const el = document.querySelector(sel); return el && el.innerText.trim() !== before }",
        arg=[PLUTO_OUTPUT, before], timeout=timeout * 1000, polling=10)
    elapsed = time.monotonic() - started
    return elapsed, str(await page.inner_text(PLUTO_OUTPUT)).strip()
