"""The e2e tests' own helpers: the stack behind nginx, opening the Voila demo in a page.

The Voila catalogue, nginx front, Chromium and process helpers are shared with the benches and
live in bench/support.py. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from bench.support import goto, REPO, VOILA_APP, nginx_front

ARTIFACTS = REPO / "artifacts" / "e2e"


def voila_browser_check() -> ModuleType:
    """apps/voila-demo/browser_check.py (its folder name has a dash, so load it by path)."""
    import importlib.util

    path = REPO / "apps" / "voila-demo" / "browser_check.py"
    spec = importlib.util.spec_from_file_location("voila_browser_check", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


async def open_voila(page: Any, url: str, *, timeout: float = 90.0) -> str:
    """Open the app (following redirects and the waiting room) until its widget shows; return the output text."""
    check = voila_browser_check()
    ms = timeout * 1000
    await goto(page, url, wait_until="domcontentloaded", timeout=ms)
    await page.wait_for_selector(check.HANDLE, state="visible", timeout=ms)
    await page.wait_for_selector(check.OUTPUT, state="visible", timeout=ms)
    return str(await page.inner_text(check.OUTPUT)).strip()

