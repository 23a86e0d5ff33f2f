"""Benchmark: a click on the student link until the executed notebook is visible in Chromium.

    python -m bench.bench_click_to_notebook [--launches 20] [--pool 2]

Runs swarmpool as separate processes (embedded nats-server, `swarmpool functions`,
`swarmpool gateway`) with the Voila demo on the real swarm, and a real Chromium (Playwright):

- click:    open http://gateway/launch/voila-demo -> 303 -> /i/<id>/ (claim + proxied page, assets, kernel
            WebSocket) until the widget's output text is rendered;
- baseline: open a fresh ready instance directly on its published port, same path /i/<id>/, until the
            same output text is rendered. No gateway, no claim.

Fairness: every sample uses a fresh, warm instance (its preheated kernel has executed the notebook
and is unused; a second page load of one instance would wait for a new kernel and execute the
notebook again). Before each sample the pool is refilled and quiet (no instance starting), the two
kinds alternate, each runs in a new browser context (cold cache), and each used instance is retired
(`admin retire`) afterwards. Time is measured in the page: from navigation start (before the click's
request, so it includes the redirect) until a MutationObserver sees the output text.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from bench.bench_proxy import SeparateStack, separate_stack
from tests.e2e.support import VOILA_APP, chromium, ensure_voila_image, instance_id_of, voila_catalogue

OUTPUT = ".sp-output .sp-value"
MARK_SHOWN = """
(() => {
  const mark = () => {
    const e = document.querySelector('%s');
    if (e && e.textContent.trim() && window.__spShown === undefined) window.__spShown = performance.now();
  };
  new MutationObserver(mark).observe(document, {subtree: true, childList: true, characterData: true});
})();
""" % OUTPUT


async def open_and_time(browser: Any, url: str, timeout: float = 120.0) -> tuple[float, float, str]:
    """Open url in a fresh context; return (ms in page from navigation start, ms wall clock, final URL)."""
    context = await browser.new_context(viewport={"width": 900, "height": 600})
    try:
        await context.add_init_script(MARK_SHOWN)
        page = await context.new_page()
        started = time.perf_counter()
        await page.goto(url, wait_until="commit", timeout=timeout * 1000)
        await page.wait_for_function("window.__spShown !== undefined", timeout=timeout * 1000, polling=20)
        wall = (time.perf_counter() - started) * 1000
        in_page = float(await page.evaluate("window.__spShown"))
        text = (await page.inner_text(OUTPUT)).strip()
        assert "growth" in text, text
        return in_page, wall, page.url
    finally:
        await context.close()


async def click_sample(pool: SeparateStack, browser: Any) -> tuple[float, float]:
    in_page, wall, final = await open_and_time(browser, f"{pool.gateway_url}/launch/{VOILA_APP}")
    instance_id = instance_id_of(final)
    await pool.retire(VOILA_APP, instance_id)
    return in_page, wall


async def direct_sample(pool: SeparateStack, browser: Any) -> tuple[float, float]:
    instance = (await pool.wait_ready(VOILA_APP, 1))[0]  # the oldest ready one: the next a click would get
    in_page, wall, _ = await open_and_time(browser, f"http://{instance.endpoint}/i/{instance.id}/")
    await pool.retire(VOILA_APP, instance.id)  # its kernel is used: never hand it out
    return in_page, wall


def row(name: str, values: list[float], base: float | None) -> str:
    med = statistics.median(values)
    p99 = statistics.quantiles(values, n=100, method="inclusive")[98] if len(values) > 1 else values[0]
    ratio = f"{med / base:.2f}" if base else "1.00"
    return f"{name:<34} {len(values):>3} {med:>9.0f} {p99:>9.0f} {min(values):>8.0f} {max(values):>8.0f} {ratio:>7}"


async def main(args: argparse.Namespace) -> int:
    ensure_voila_image()
    catalogue = voila_catalogue(size=args.pool, max_=args.pool + 2, idle="10m", grace="10m", lifetime="1h")
    clicks: list[tuple[float, float]] = []
    direct: list[tuple[float, float]] = []
    async with separate_stack(catalogue) as pool, chromium() as browser:
        await pool.wait_ready(VOILA_APP, args.pool, timeout=300)
        print(f"pool of {args.pool} warm; {args.launches} clicks and {args.launches} direct opens, alternating",
              flush=True)
        # warm Chromium up once, so the first sample does not pay for the browser's own start
        await open_and_time(browser, "data:text/html,<p class=sp-output><span class=sp-value>growth</span></p>")
        for i in range(args.launches):
            for kind, samples, sample in (("click", clicks, click_sample), ("direct", direct, direct_sample)):
                await pool.wait_ready(VOILA_APP, args.pool, timeout=300)  # refilled and quiet
                samples.append(await sample(pool, browser))
                print(f"  {i + 1:>2} {kind:<6} {samples[-1][0]:7.0f} ms in page, {samples[-1][1]:7.0f} ms wall",
                      flush=True)
    base = statistics.median(v for v, _ in direct)
    base_wall = statistics.median(w for _, w in direct)
    print()
    print(f"{'click -> executed notebook visible':<34} {'n':>3} {'p50 ms':>9} {'p99 ms':>9} {'min':>8} {'max':>8} "
          f"{'x base':>7}")
    print(row("direct open (baseline, in page)", [v for v, _ in direct], None))
    print(row("click via gateway (in page)", [v for v, _ in clicks], base))
    print(row("direct open (wall clock)", [w for _, w in direct], None))
    print(row("click via gateway (wall clock)", [w for _, w in clicks], base_wall))
    print(f"\nthe click costs {statistics.median(v for v, _ in clicks) - base:+.0f} ms at p50 over opening a warm "
          "instance directly (claim over NATS, 303, and the gateway hop for the page, its assets and the kernel "
          "WebSocket).")
    print("in page: performance.now() at the output text appearing, from navigation start (includes the 303);"
          " wall clock: Playwright goto() to the same signal seen from Python.")
    print("both kinds use fresh warm instances (preheated kernel, notebook executed, never opened), a new"
          " browser context each, the pool refilled and quiet before each sample; used instances are retired.")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=20, help="samples of each kind")
    parser.add_argument("--pool", type=int, default=2, help="warm pool size")
    sys.exit(asyncio.run(main(parser.parse_args())))
