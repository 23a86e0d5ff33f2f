"""A student's click through real nginx and the real gateway lands on an executed Voila notebook."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bench.support import VOILA_APP, instance_id_of, voila_catalogue
from tests.e2e.support import ARTIFACTS, Front, voila_browser_check, voila_front

pytestmark = pytest.mark.e2e

# what the notebook's last computing cell left in the output widget at slider value 5.0
EXECUTED_OUTPUT = re.compile(r"After 20 years at 5\.0% growth: 2,653")


@pytest.fixture(scope="module")
async def front(nats_server: Any, module_namespace: str, voila_image: str,
                tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Front]:
    catalogue = voila_catalogue(size=2, max_=4)
    async with voila_front(nats_server.url, module_namespace, catalogue, tmp_path_factory.mktemp("nginx")) as f:
        yield f


async def test_click_lands_on_executed_notebook_and_the_kernel_answers(front: Front, browser: Any) -> None:
    await front.stack.wait_ready(1, timeout=180)
    context = await browser.new_context(viewport={"width": 900, "height": 600})
    try:
        page = await context.new_page()
        result = await voila_browser_check().drive_voila(page, front.launch_url(), timeout=90)
        instance_id = instance_id_of(page.url)
        assert re.fullmatch(rf"{re.escape(front.url)}/i/{instance_id}/", page.url), page.url
        # the output was already there when the widget appeared: the notebook had executed
        assert EXECUTED_OUTPUT.search(result["before"]), result
        # moving the slider went to the kernel and back over the proxied WebSocket
        assert result["after"] != result["before"]
        assert f"{float(result['slider_after']):.1f}%" in result["after"], result
        record = front.stack.store.get(VOILA_APP, instance_id)
        assert record is not None and record.instance.state == "claimed" and record.instance.used
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "voila.png"), full_page=True)
    finally:
        await context.close()


async def test_a_second_browser_gets_a_different_instance(front: Front, browser: Any) -> None:
    await front.stack.wait_ready(2, timeout=180)
    contexts = [await browser.new_context() for _ in range(2)]
    try:
        ids = []
        for context in contexts:  # separate cookie jars: two students on two machines
            page = await context.new_page()
            output = await voila_browser_check().drive_voila(page, front.launch_url(), timeout=90, steps=1)
            assert EXECUTED_OUTPUT.search(output["before"]), output
            ids.append(instance_id_of(page.url))
        assert ids[0] != ids[1]
        for instance_id in ids:
            record = front.stack.store.get(VOILA_APP, instance_id)
            assert record is not None and record.instance.state == "claimed"
    finally:
        for context in contexts:
            await context.close()
