"""A student's click lands on an executed, warm Pluto notebook: through the real gateway, then through real
nginx in front of it; Chromium never sends a request off this machine, and a slider move comes back from
Julia. One warm pool for the module; its own lane: `pytest -m pluto`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.support import (
    NGINX,
    PLUTO_APP,
    PlutoImageMissing,
    ensure_pluto_image,
    instance_id_of,
    local_only,
    move_pluto_slider,
    open_pluto,
    pluto_catalogue,
)
from tests.e2e.support import ARTIFACTS, Front, voila_front

pytestmark = [pytest.mark.pluto, pytest.mark.timeout(900)]

# what the notebook shows at the slider's default (5.0%), computed by Julia before anyone opened it
EXECUTED = re.compile(r"After 20 years at 5\.0% growth:\s*2653")
# one step right on the 0:0.5:15 slider: a rate that is not an integer
MOVED = re.compile(r"After 20 years at 5\.5% growth:\s*2918")
NOTEBOOK_ID = "5a1f0000-0000-4000-8000-00000000c0de"
CLICKED: list[str] = []  # instances handed out in this module, in order


@pytest.fixture(scope="module")
def pluto_image() -> str:
    """The image, built offline when missing; a machine that cannot build it fails here (never a skip)."""
    import os

    if not os.path.exists(NGINX):
        pytest.fail(f"nginx is not installed ({NGINX}); apt-get install -y nginx")
    try:
        return ensure_pluto_image()
    except PlutoImageMissing as err:
        pytest.fail(str(err))


@pytest.fixture(scope="module")
async def front(nats_server: Any, module_namespace: str, pluto_image: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    # two warm instances, started together: one for the click through the gateway, one through nginx
    catalogue = pluto_catalogue(size=2, max_=3, parallel=2)
    async with voila_front(nats_server.url, module_namespace, catalogue, tmp_path_factory.mktemp("nginx")) as f:
        await f.stack.wait_ready(2, timeout=600)  # seconds each on the system image
        yield f


def test_the_image_runs_pluto_from_its_system_image(pluto_image: str) -> None:
    """Julia starts with Pluto and PlutoUI already in memory (compiled into the image's system image, which every
    instance maps from the same read-only file), and the build's linker did not ship."""
    config = subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Cmd}}", pluto_image],
                            capture_output=True, text=True, check=True).stdout
    assert '"-J","/opt/pluto-sys/pluto.so"' in config.replace(" ", ""), config
    # W_OK = 2: may the app user write the file? and is there a linker on the PATH?
    script = """print(join(sort([k.name for k in keys(Base.loaded_modules)]), " "), " writable=",
                    ccall(:access, Cint, (Cstring, Cint), "/opt/pluto-sys/pluto.so", 2) == 0,
                    " ld=", Sys.which("ld") !== nothing)"""
    done = subprocess.run(["docker", "run", "--rm", "--cap-drop", "ALL", "--network", "none", pluto_image, "julia",
                           "--startup-file=no", "-J", "/opt/pluto-sys/pluto.so", "-e", script],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = done.stdout.split(" writable=")[0].split()
    assert {"Pluto", "PlutoUI", "HTTP", "MsgPack"} <= set(loaded), loaded
    assert done.stdout.endswith(" writable=false ld=false"), done.stdout


async def click_and_move(browser: Any, launch_url: str, base: str, shot: str) -> str:
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        outside = await local_only(context)
        page = await context.new_page()
        before = await open_pluto(page, launch_url, timeout=60)
        instance_id = instance_id_of(page.url)
        assert page.url == f"{base}/i/{instance_id}/edit?id={NOTEBOOK_ID}", page.url
        assert EXECUTED.search(before), before  # executed before the click: Julia's output is there
        seconds, after = await move_pluto_slider(page, "ArrowRight", timeout=60)
        assert MOVED.search(after), after  # 5.5 went to Julia over the proxied WebSocket and came back
        seconds, back = await move_pluto_slider(page, "ArrowLeft", timeout=60)
        assert EXECUTED.search(back), back
        classes = await page.eval_on_selector_all("pluto-cell", "cells => cells.map(c => c.className)")
        assert not [c for c in classes if "errored" in c or "running" in c or "queued" in c], classes
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / shot), full_page=True)
        assert outside == [], f"requests that would leave the machine: {outside}"
        CLICKED.append(instance_id)
        return instance_id
    finally:
        await context.close()


async def test_click_through_the_gateway_lands_on_the_executed_notebook(front: Front, browser: Any) -> None:
    gateway = front.stack.url
    instance_id = await click_and_move(browser, f"{gateway}/launch/{PLUTO_APP}", gateway, "pluto-gateway.png")
    record = front.stack.store.get(PLUTO_APP, instance_id)
    assert record is not None and record.instance.state == "claimed" and record.instance.used


async def test_click_through_nginx_lands_on_another_executed_notebook(front: Front, browser: Any) -> None:
    instance_id = await click_and_move(browser, front.launch_url(PLUTO_APP), front.url, "pluto-nginx.png")
    record = front.stack.store.get(PLUTO_APP, instance_id)
    assert record is not None and record.instance.state == "claimed" and record.instance.used
    assert CLICKED.count(instance_id) == 1, "a second click got the first click's instance"
    # Pluto's frontend-dist files came from the gateway's shared cache (filled from an untouched instance)
    async with front.stack.http.get(f"{front.stack.url}/metrics") as response:
        metrics = await response.text()
    hits = re.search(r'swarmpool_gateway_static_cache_total\{app="pluto-demo",outcome="hit"\} (\d+)', metrics)
    assert hits and int(hits.group(1)) > 0, [line for line in metrics.splitlines() if "static_cache" in line]
