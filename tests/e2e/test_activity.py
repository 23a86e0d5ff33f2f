"""Activity with a real browser: an untouched tab is retired for idleness, a tab in use stays alive."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from swarmpool.bus.messages import Instance
from bench.support import VOILA_APP, instance_id_of, voila_catalogue
from tests.e2e.support import Front, open_voila, voila_browser_check, voila_front
from tests.stack import wait_for

pytestmark = pytest.mark.e2e

IDLE = 15.0  # seconds without client traffic (a page that loads slowly on a busy machine sends its first in more than 6)
MOVE_EVERY = 1.0


@pytest.fixture(scope="module")
async def front(nats_server: Any, module_namespace: str, voila_image: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    # a long disconnect grace and lifetime: only the idle rule can retire a tab in this test
    catalogue = voila_catalogue(size=2, max_=4, idle=f"{IDLE:.0f}s", grace="30s", lifetime="120s")
    async with voila_front(nats_server.url, module_namespace, catalogue, tmp_path_factory.mktemp("nginx")) as f:
        yield f


async def _keep_moving(page: Any, stop: asyncio.Event, answered: list[float]) -> None:
    """Move the slider one notch (right, then left, ...) every second and wait for the kernel's answer."""
    check = voila_browser_check()
    handle = page.locator(check.HANDLE)
    key = "ArrowRight"
    while not stop.is_set():
        before = (await page.inner_text(check.OUTPUT)).strip()
        await handle.press(key)
        await page.wait_for_function(
            "([sel, old]) => { const e = document.querySelector(sel); return e && e.innerText.trim() !== old; }",
            arg=[check.OUTPUT, before], timeout=60_000)
        answered.append(time.monotonic())
        key = "ArrowLeft" if key == "ArrowRight" else "ArrowRight"
        try:
            async with asyncio.timeout(MOVE_EVERY):
                await stop.wait()
        except TimeoutError:
            pass


async def test_untouched_tab_is_retired_by_idle_and_a_busy_tab_stays(front: Front, browser: Any) -> None:
    store = front.stack.store
    await front.stack.wait_ready(2, timeout=180)
    retiring: dict[str, Instance] = {}

    def note_retiring(old: Instance | None, new: Instance | None) -> None:
        if new is not None and new.state == "retiring":
            retiring[new.id] = new

    store.on_change(note_retiring)
    idle_context, busy_context = await browser.new_context(), await browser.new_context()
    stop = asyncio.Event()
    mover: asyncio.Task[None] | None = None
    try:
        idle_page, busy_page = await idle_context.new_page(), await busy_context.new_page()
        await open_voila(idle_page, front.launch_url())
        await open_voila(busy_page, front.launch_url())
        idle_id, busy_id = instance_id_of(idle_page.url), instance_id_of(busy_page.url)
        assert idle_id != busy_id
        answered: list[float] = []
        mover = asyncio.create_task(_keep_moving(busy_page, stop, answered))
        busy_since = time.monotonic()

        # the untouched tab keeps its kernel WebSocket open, but sends nothing: idle retires it
        await wait_for(lambda: store.get(VOILA_APP, idle_id) is None, timeout=90,
                       what="the untouched tab's instance to be retired")
        assert idle_id in retiring and retiring[idle_id].reason.startswith("idle"), retiring.get(idle_id)

        # the busy tab outlives twice the idle timeout while the slider keeps moving
        def busy_outlived_idle() -> bool | None:
            assert not mover.done(), "the slider mover stopped"  # type: ignore[union-attr]
            record = store.get(VOILA_APP, busy_id)
            assert record is not None and record.instance.state == "claimed", \
                f"the busy tab was retired: {retiring.get(busy_id)}"
            return time.monotonic() - busy_since > 2 * IDLE + 2 or None

        await wait_for(busy_outlived_idle, timeout=60, what="the busy tab to outlive the idle timeout",
                       interval=0.2)
        assert busy_id not in retiring
        assert len([t for t in answered if t > busy_since + IDLE]) >= 3, "the kernel stopped answering"

        # the retired tab's next request lands on the session-ended page
        response = await idle_page.reload(wait_until="domcontentloaded")
        assert response is not None and response.status == 404
        assert "start a new one" in (await idle_page.inner_text("body")).lower()
        assert await idle_page.locator(f'a[href="/launch/{VOILA_APP}"]').count() == 1
    finally:
        stop.set()
        if mover is not None:
            await asyncio.gather(mover, return_exceptions=True)
        await idle_context.close()
        await busy_context.close()
