"""Drive the voila-demo notebook in a real browser: find the slider, move it, see the kernel answer.

Reusable by the e2e tests (`from apps.voila_demo...` is not importable because of the dash, so load
it by path, see `load()` below) and runnable by hand:

    python apps/voila-demo/browser_check.py http://127.0.0.1:18866/i/abc/ --screenshot /tmp/voila.png
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

SLIDER = ".sp-slider"  # the FloatSlider (ipywidgets add_class)
HANDLE = ".sp-slider .noUi-handle"  # the draggable knob; noUiSlider moves it with arrow keys
READOUT = ".sp-slider .widget-readout"
OUTPUT = ".sp-output .sp-value"  # "After 20 years at 5.0% growth: 2,653"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-background-networking"]


def load() -> ModuleType:
    """Import this file as a module from anywhere (its folder name has a dash)."""
    spec = importlib.util.spec_from_file_location("voila_browser_check", Path(__file__))
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def drive_voila(page: Any, url: str, *, timeout: float = 60.0, steps: int = 4) -> dict[str, Any]:
    """Open the app, read the output, move the slider `steps` notches right, wait for new output.

    Returns {"before", "after", "slider_before", "slider_after", "seconds_to_widget"}; raises a
    Playwright TimeoutError if the widget never shows or the kernel never answers.
    """
    ms = timeout * 1000
    loop = asyncio.get_running_loop()
    started = loop.time()
    await page.goto(url, wait_until="domcontentloaded", timeout=ms)
    # The widget appears only once voila's JS has connected to the (already executed) kernel.
    await page.wait_for_selector(HANDLE, state="visible", timeout=ms)
    await page.wait_for_selector(OUTPUT, state="visible", timeout=ms)
    seconds_to_widget = loop.time() - started
    before = (await page.inner_text(OUTPUT)).strip()
    slider_before = (await _readout(page)).strip()

    handle = page.locator(HANDLE)
    await handle.focus()
    for _ in range(steps):
        await handle.press("ArrowRight")
    # The readout moves in the browser at once; the output text comes back from the kernel over
    # the widget comm (a real round trip). Wait until it shows the slider's final value.
    slider_after = (await _readout(page)).strip()
    await page.wait_for_function(
        """([sel, old, value]) => {
            const e = document.querySelector(sel);
            if (!e) return false;
            const text = e.innerText.trim();
            return text !== old && (value === "" || text.includes(Number(value).toFixed(1) + "%"));
        }""",
        arg=[OUTPUT, before, slider_after],
        timeout=ms,
    )
    after = (await page.inner_text(OUTPUT)).strip()
    return {
        "before": before,
        "after": after,
        "slider_before": slider_before,
        "slider_after": slider_after,
        "seconds_to_widget": round(seconds_to_widget, 3),
    }


async def _readout(page: Any) -> str:
    element = await page.query_selector(READOUT)
    if element is None:
        return ""
    return (await element.inner_text()) or (await element.get_attribute("value")) or ""


async def main(argv: list[str] | None = None) -> int:
    from playwright.async_api import async_playwright

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--screenshot", help="PNG path for a picture after the slider moved")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 900, "height": 600})
            result = await drive_voila(page, args.url, timeout=args.timeout)
            if args.screenshot:
                await page.screenshot(path=args.screenshot, full_page=True)
        finally:
            await browser.close()
    print(json.dumps(result, indent=2))
    return 0 if result["before"] != result["after"] else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
