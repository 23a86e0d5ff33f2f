"""Benchmark: a class clicks at once. N students open the Voila demo at the same moment.

    python -m bench.bench_class [--students 12] [--mbit 10]

Runs `swarmpool up` (embedded nats-server, the real swarm, a catalogue of the Voila demo alone as
apps/catalogue.toml declares it: static_paths, settle_on) as its own process, with a warm pool of
N + 2, and a real Chromium (Playwright, one browser context per student: own cookies, own cold HTTP
cache, own network conditions). For each row, all N students start their navigation at once:

- direct:          N instances claimed over the bus first, then each opened on its published
                   127.0.0.1 port (no gateway, no cache): the baseline, same number of instances;
- gateway:         each student opens /launch/voila-demo on the gateway (claim, 303, proxied page,
                   shared static cache, kernel WebSocket);
- nginx + gateway: the same through the real nginx front (nginx/render.py, gzip on).

Each row runs without and with per-student bandwidth emulation (CDP Network.emulateNetworkConditions,
--mbit down and up per browser context). Per student it measures:

- click -> visible: from the moment all navigations start until the executed notebook's output
  text is in the page (performance.timeOrigin + a MutationObserver/frame mark, so Python's polling
  adds nothing);
- slider: from the key press on the slider's handle until the output text changed (the kernel's
  answer over the WebSocket), measured in the page;
- bytes on the wire: the sum of CDP Network.loadingFinished encodedDataLength (headers and the
  encoded body, as received) over the page load and the slider move;
- instance requests: direct: every response the browser got (and its WebSocket) came from the
  instance; through the gateway: the gateway's /metrics counters before and after the row
  (proxied HTTP + WebSocket, plus the static cache's fills from a ready instance), divided by N.

Before the table, one student opens the app through the gateway on a cold static cache (the first
student of the image); every student of the rows is then a later student of the same image. Between
rows the used instances are retired and the pool is refilled and quiet. Ratios are p50 click ->
visible over the direct row with the same network conditions.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import signal
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from nats.aio.client import Client as NATS
from prometheus_client.parser import text_string_to_metric_families

from bench.support import (NETWORK_CHANGED, VOILA_APP, chromium, class_catalogue, ensure_voila_image, goto,
                           instance_id_of, kernel_message, nginx_front, pct, stop_process)
from swarmpool.bus.messages import ClaimRequest, Claimed, Instance, RetireRequest
from swarmpool.bus.roles import Access, credentials_path
from swarmpool.bus.wire import connect, encode
from swarmpool.bus.state import InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.ids import instance_prefix
from swarmpool.swarm.model import LABEL_ID
from swarmpool.natsd import free_port

OUTPUT = ".sp-output .sp-value"  # "After 20 years at 5.0% growth: 2,653"
HANDLE = ".sp-slider .noUi-handle"
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts" / "bench"
EXTRA = 2  # warm instances beyond the class

# the first moment the output text is in the page (observer plus a per-frame check, as in
# bench_click_to_notebook), and the slider's key press -> changed output, both in page time
MARKS = """
(() => {
  const text = () => { const e = document.querySelector('%s'); return e ? e.textContent.trim() : ''; };
  const mark = () => {
    if (window.__spShown === undefined && text()) window.__spShown = performance.now();
    if (window.__spKey !== undefined && window.__spChanged === undefined && text() !== window.__spBefore)
      window.__spChanged = performance.now();
    return window.__spShown !== undefined;
  };
  window.__spMark = mark;
  document.addEventListener('keydown', () => {
    if (window.__spKey === undefined) { window.__spBefore = text(); window.__spKey = performance.now(); }
  }, true);
  new MutationObserver(mark).observe(document, {subtree: true, childList: true, characterData: true});
  const frame = () => { mark(); if (window.__spChanged === undefined) requestAnimationFrame(frame); };
  requestAnimationFrame(frame);
})();
""" % OUTPUT


# ---- swarmpool up, as its own process ----


@dataclass
class Pool:
    namespace: str
    url: str  # the gateway
    store: InstanceStore
    gateway_nc: NATS  # claims, the records (the gateway's bus role)
    operator_nc: NATS  # admin retire
    keep: bool = False  # a student failed: keep up.log for the diagnosis

    async def wait_full(self, n: int, timeout: float = 600) -> list[Instance]:
        """At least n ready instances and none starting (the pool refilled and quiet)."""
        deadline = time.monotonic() + timeout
        while True:
            records = self.store.all(VOILA_APP)
            ready = [r for r in records if r.state == "ready"]
            if len(ready) >= n and not any(r.state == "starting" for r in records):
                return sorted(ready, key=lambda r: r.ready_at or 0)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {n} ready {VOILA_APP} instances within {timeout:.0f} s "
                                   f"({len(ready)} ready)")
            await self.store.wait_changed(1)

    async def claim(self) -> Claimed:
        reply = await self.gateway_nc.request(Subjects(self.namespace).claim(VOILA_APP),
                                              encode(ClaimRequest(app=VOILA_APP, wait=10)), timeout=20)
        return msgspec.json.decode(reply.data, type=Claimed)

    async def retire(self, instance_id: str) -> None:
        reply = await self.operator_nc.request(Subjects(self.namespace).admin("retire"),
                                               encode(RetireRequest(app=VOILA_APP, id=instance_id)), timeout=30)
        if b'"type":"ok"' not in reply.data:
            print(f"  retire failed: {reply.data[:200]!r}", flush=True)

    async def metrics(self) -> dict[tuple[str, str], float]:
        """The gateway's counters for the app: (metric, kind or outcome) -> value."""
        async with aiohttp.ClientSession() as http, http.get(f"{self.url}/metrics") as r:
            text = await r.text()
        out: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.labels.get("app") == VOILA_APP and s.name.endswith("_total"):
                    out[(s.name, s.labels.get("kind") or s.labels.get("outcome") or "")] = s.value
        return out


@asynccontextmanager
async def swarmpool_up(catalogue_text: str, pool_size: int) -> AsyncIterator[Pool]:
    state = Path(tempfile.mkdtemp(prefix="bench-class-"))
    (state / "catalogue.toml").write_text(catalogue_text)
    port = free_port()
    namespace = "bclass" + "".join(random.choices(string.ascii_lowercase, k=5))
    log = open(state / "up.log", "wb")
    pool: Pool | None = None
    proc = subprocess.Popen(
        [sys.executable, "-m", "swarmpool.cli", "up", "--catalogue", str(state / "catalogue.toml"),
         "--port", str(port), "--state-dir", str(state / "state"), "--namespace", namespace, "--no-build",
         "--dashboard-port", "0"],  # another up on this machine may hold the default dashboard port
        stdout=log, stderr=subprocess.STDOUT)
    print(f"swarmpool up (namespace {namespace}, log {state / 'up.log'}) ...", flush=True)
    try:
        async with AsyncExitStack() as stack:
            nats_url = ""
            deadline = time.monotonic() + 120
            while not nats_url:
                if proc.poll() is not None:
                    raise RuntimeError(f"swarmpool up exited with {proc.returncode}: see {state / 'up.log'}")
                if time.monotonic() > deadline:
                    raise TimeoutError("swarmpool up did not start its nats-server within 120 s")
                if m := re.search(r"embedded nats-server on (\S+)", (state / "up.log").read_text()):
                    nats_url = m.group(1)
                await asyncio.sleep(0.1)
            nc = {}
            for role in ("gateway", "operator"):
                access = Access.load(credentials_path(state / "state", role))
                nc[role] = await connect(nats_url, f"bench-class-{role}", access=access,
                                         inbox_prefix=Subjects(namespace).inbox(role))
                stack.push_async_callback(nc[role].drain)
            url = f"http://127.0.0.1:{port}"
            async with aiohttp.ClientSession() as http:
                while True:
                    try:
                        async with http.get(f"{url}/healthz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    if proc.poll() is not None:
                        raise RuntimeError(f"swarmpool up exited with {proc.returncode}")
                    await asyncio.sleep(0.1)
            store = await stack.enter_async_context(
                await InstanceStore.open(nc["gateway"], Subjects(namespace), time.time, create=False))
            pool = Pool(namespace, url, store, nc["gateway"], nc["operator"])
            started = time.monotonic()
            await pool.wait_full(pool_size)
            print(f"warm pool of {pool_size} in {time.monotonic() - started:.0f} s", flush=True)
            yield pool
    finally:
        stop_process(proc, signal.SIGINT, timeout=180)  # up removes its instances on the way out
        log.close()
    if pool is not None and pool.keep:
        print(f"a student failed: up.log kept in {state}", flush=True)
    else:
        shutil.rmtree(state, ignore_errors=True)  # kept (with up.log) when the run or a student failed


# ---- students ----

def instance_log(url: str) -> list[str]:
    """The log of the container behind an instance URL (stdout and stderr), for a failed student."""
    try:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_ID}={instance_id_of(url)}"],
                             capture_output=True, text=True, timeout=30).stdout.split()
        if not ids:
            return ["(no container)"]
        out = subprocess.run(["docker", "logs", "-t", ids[0]], capture_output=True, text=True, timeout=30)
        return (out.stdout + out.stderr).splitlines()
    except (ValueError, subprocess.SubprocessError) as err:
        return [f"(no log: {err})"]


@dataclass
class Student:
    context: Any
    page: Any
    bytes: int = 0
    responses: int = 0
    websockets: int = 0
    error: str = ""
    visible_ms: float = 0.0
    slider_ms: float = 0.0
    url: str = ""
    events: list[str] = field(default_factory=list)  # what the page saw go wrong, for a failed student
    frames: list[str] = field(default_factory=list)  # the kernel WebSocket's messages, one line each
    t0: float = 0.0  # the row's start (time.monotonic), for the events' times

    @property
    def lost_to_host(self) -> bool:
        """Not served because Chromium aborted the page's loads with ERR_NETWORK_CHANGED: Docker adds a veth
        (with an IPv6 link-local address) on this host for each container it starts, and Chromium on the
        same host reads that as a network change. A student's browser on another machine never sees it."""
        return bool(self.error) and any(NETWORK_CHANGED in e for e in self.events)


def frame_line(direction: str, payload: str | bytes) -> str:
    """One line per kernel message: channel, type and what matters for the widgets (comm targets,
    methods, the model ids an update_states carries, the kernel's status)."""
    try:
        msg = kernel_message(payload)
    except Exception as err:  # a frame this bench cannot read: say so, never fail the student for it
        return f"{direction} unreadable frame ({type(err).__name__}, {len(payload)} bytes)"
    kind, content = msg["header"].get("msg_type", "?"), msg["content"]
    data = content.get("data", {}) if isinstance(content.get("data"), dict) else {}
    detail = ""
    if kind == "status":
        detail = content.get("execution_state", "")
    elif kind in ("comm_open", "comm_msg", "comm_close"):
        detail = f"{content.get('target_name', '')} comm {str(content.get('comm_id', ''))[:8]} {data.get('method', '')}"
        if data.get("method") == "update_states":
            detail += " models " + ",".join(sorted(k[:8] for k in data.get("states", {})))
    elif kind == "comm_info_reply":
        detail = f"{len(content.get('comms', {}))} comms"
    return f"{direction} {msg['channel']} {kind} {detail}".rstrip()


def follow(student: Student, page: Any) -> None:
    """Record the page's console errors and warnings, failed requests, WebSocket ends and kernel messages."""
    def note(what: str) -> None:
        student.events.append(f"{time.monotonic() - student.t0:7.2f} s {what[:200]}")

    def frame(direction: str, payload: str | bytes) -> None:
        student.frames.append(f"{time.monotonic() - student.t0:7.2f} s {frame_line(direction, payload)[:300]}")

    def console(message: Any) -> None:
        if message.type in ("error", "warning"):
            note(f"console {message.type}: {message.text}")

    def websocket(ws: Any) -> None:
        note(f"websocket open {ws.url}")
        ws.on("socketerror", lambda error: note(f"websocket error {ws.url}: {error}"))
        ws.on("close", lambda _: note(f"websocket closed {ws.url}"))
        if "/channels" in ws.url:
            ws.on("framesent", lambda payload: frame(">", payload))
            ws.on("framereceived", lambda payload: frame("<", payload))

    page.on("console", console)
    page.on("pageerror", lambda error: note(f"page error: {error}"))
    page.on("requestfailed", lambda request: note(f"request failed {request.url}: {request.failure}"))
    page.on("websocket", websocket)


async def prepare(browser: Any, mbit: float | None) -> Student:
    context = await browser.new_context(viewport={"width": 900, "height": 600})
    await context.add_init_script(MARKS)
    page = await context.new_page()
    cdp = await context.new_cdp_session(page)
    student = Student(context, page)
    follow(student, page)

    def finished(event: dict[str, Any]) -> None:
        student.bytes += int(event.get("encodedDataLength", 0))

    def received(event: dict[str, Any]) -> None:
        student.responses += 1

    def socket(event: dict[str, Any]) -> None:
        student.websockets += 1

    cdp.on("Network.loadingFinished", finished)
    cdp.on("Network.responseReceived", received)
    cdp.on("Network.webSocketCreated", socket)
    await cdp.send("Network.enable")
    if mbit:
        rate = mbit * 1_000_000 / 8  # bytes per second
        await cdp.send("Network.emulateNetworkConditions",
                       {"offline": False, "latency": 0, "downloadThroughput": rate, "uploadThroughput": rate})
    return student


async def attend(student: Student, url: str, t0_ms: float, timeout: float) -> None:
    """Open url (the navigation started at epoch t0_ms), wait for the output, move the slider."""
    page, ms = student.page, timeout * 1000
    try:
        await goto(page, url, wait_until="commit", timeout=ms)
        await page.wait_for_function("window.__spMark && window.__spMark()", timeout=ms, polling=20)
        student.visible_ms = float(await page.evaluate("performance.timeOrigin + window.__spShown")) - t0_ms
        student.url = page.url
        handle = page.locator(HANDLE)
        await handle.wait_for(state="visible", timeout=ms)
        await handle.focus()
        await handle.press("ArrowRight")
        await page.wait_for_function("window.__spChanged !== undefined", timeout=ms, polling=20)
        student.slider_ms = float(await page.evaluate("window.__spChanged - window.__spKey"))
        await page.wait_for_load_state("load", timeout=ms)
    except Exception as err:
        student.error = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
        student.url = student.url or page.url
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            await page.screenshot(path=str(ARTIFACTS / "bench-class-timeout.png"))
        except Exception:
            pass


@dataclass
class Row:
    name: str
    mbit: float | None
    students: list[Student] = field(default_factory=list)
    instance_requests: float = 0.0  # per student
    cache: dict[str, float] = field(default_factory=dict)  # hit / pass / fill, per row
    wall_s: float = 0.0
    round: int = 0  # of --rounds: its ratio is to the direct row of the same round

    def ok(self) -> list[Student]:
        return [s for s in self.students if not s.error]


def counters_delta(before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, label), value in after.items():
        short = {"swarmpool_gateway_proxied_requests_total": "proxied_",
                 "swarmpool_gateway_static_cache_total": "cache_"}.get(name)
        if short:
            out[short + label] = value - before.get((name, label), 0.0)
    return out


async def run_row(pool: Pool, browser: Any, name: str, urls: list[str], mbit: float | None,
                  timeout: float) -> Row:
    row = Row(name, mbit)
    row.students = [await prepare(browser, mbit) for _ in urls]
    before = await pool.metrics()
    started = time.perf_counter()
    for s in row.students:
        s.t0 = time.monotonic()
    t0_ms = time.time() * 1000
    await asyncio.gather(*(attend(s, url, t0_ms, timeout) for s, url in zip(row.students, urls)))
    row.wall_s = time.perf_counter() - started
    delta = counters_delta(before, await pool.metrics())
    row.cache = {k.removeprefix("cache_"): v for k, v in delta.items() if k.startswith("cache_")}
    n = len(urls)
    if name.startswith("direct"):  # every response and the WebSocket came from the student's instance
        row.instance_requests = sum(s.responses + s.websockets for s in row.students) / n
    else:
        reached = delta.get("proxied_http", 0) + delta.get("proxied_websocket", 0) + delta.get("cache_fill", 0)
        row.instance_requests = reached / n
    for s in row.students:
        await s.context.close()
    failed = [s for s in row.students if s.error]
    ok = row.ok()
    print(f"  {name:<24} {len(ok)}/{n} ok in {row.wall_s:.1f} s; click->visible p50 "
          f"{pct([s.visible_ms for s in ok], 50):.0f} ms; {sum(s.bytes for s in row.students) / n / 1e6:.2f} MB and "
          f"{row.instance_requests:.1f} instance requests per student; cache {row.cache}", flush=True)
    for s in failed:
        pool.keep = True
        host = " [lost to a host network change: ERR_NETWORK_CHANGED]" if s.lost_to_host else ""
        print(f"    failed: {s.error} ({s.url}){host}", flush=True)
        for event in s.events[-20:]:
            print(f"      {event}", flush=True)
        print("      kernel WebSocket (> sent, < received):", flush=True)
        for line in s.frames[:80]:
            print(f"        {line}", flush=True)
        print("      instance log:", flush=True)
        for line in instance_log(s.url)[-40:]:
            print(f"        {line[:240]}", flush=True)
    # their kernels are used: never hand them out again
    for s in row.students:
        try:
            await pool.retire(instance_id_of(s.url))
        except ValueError:
            pass
    return row


def table(rows: list[Row], n: int, mbit: float) -> str:
    base = {(r.round, r.mbit): pct([s.visible_ms for s in r.ok()], 50) for r in rows if r.name == "direct"}
    lines = [
        f"| row ({n} students at once)          | ok | visible p50 ms | visible p99 ms | slider p50 ms | "
        "MB/student | instance req/student | ratio to direct |",
        "|-----------------------------------|----|----------------|----------------|---------------|"
        "------------|----------------------|-----------------|",
    ]
    for r in rows:
        ok = r.ok()
        visible = [s.visible_ms for s in ok]
        p50 = pct(visible, 50)
        label = r.name + (f", {mbit:g} Mbit/s" if r.mbit else "") + (f" #{r.round + 1}" if r.round else "")
        ratio = p50 / base[r.round, r.mbit] if base.get((r.round, r.mbit)) else float("nan")
        lines.append(
            f"| {label:<33} | {len(ok):>2} | {p50:>14.0f} | {pct(visible, 99):>14.0f} | "
            f"{pct([s.slider_ms for s in ok], 50):>13.0f} | {sum(s.bytes for s in r.students) / len(r.students) / 1e6:>10.2f} | "
            f"{r.instance_requests:>20.1f} | {ratio:>15.2f} |")
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    ensure_voila_image()
    n = args.students
    size = n + EXTRA
    catalogue = class_catalogue(size=size, max_=2 * n + EXTRA + 2,
                                settings=f"settle_cap = {args.settle_cap}\nstart_budget = {args.start_budget}\n")
    # the direct row bypasses the gateway, so no request of its students is seen: without this, a
    # slow page load would outlast unused_grace and its instance be retired under the student
    catalogue = catalogue.replace("[apps.voila-demo.session]\n", '[apps.voila-demo.session]\nunused_grace = "1h"\n', 1)
    kinds = [k.strip() for k in args.rows.split(",")]
    conditions: list[float | None] = [None, args.mbit] if args.mbit else [None]
    rows: list[Row] = []
    async with swarmpool_up(catalogue, size) as pool, chromium() as browser:
        with tempfile.TemporaryDirectory(prefix="bench-class-nginx-") as tmp:
            with nginx_front(Path(tmp), pool.url.removeprefix("http://")) as nginx:
                launch = {"gateway": f"{pool.url}/launch/{VOILA_APP}",
                          "nginx + gateway": f"{nginx}/launch/{VOILA_APP}"}
                print("the first student of the image (cold static cache), through the gateway:", flush=True)
                first = await run_row(pool, browser, "first student", [launch["gateway"]], None, args.timeout)
                for round_, mbit in [(i, c) for i in range(args.rounds) for c in conditions]:
                    for kind in ("direct", "gateway", "nginx + gateway"):
                        if kind.split()[0] not in kinds:
                            continue
                        await pool.wait_full(size)
                        if kind == "direct":
                            claims = await asyncio.gather(*(pool.claim() for _ in range(n)))
                            for c in claims:
                                if not c.endpoint.startswith("127.0.0.1:"):
                                    raise SystemExit(f"instance endpoint {c.endpoint} is not on loopback")
                            urls = [f"http://{c.endpoint}{instance_prefix(c.id)}" for c in claims]
                        else:
                            urls = [launch[kind]] * n
                        rows.append(await run_row(pool, browser, kind, urls, mbit, args.timeout))
                        rows[-1].round = round_
    print()
    print(f"first student of the image (cold cache, through the gateway): {first.instance_requests:.0f} requests "
          f"reached instances ({first.cache.get('fill', 0):.0f} of them static cache fills from a ready instance), "
          f"{first.students[0].bytes / 1e6:.2f} MB, click->visible {first.students[0].visible_ms:.0f} ms")
    print()
    print(table(rows, n, args.mbit))
    lost = sum(len(r.students) - len(r.ok()) for r in rows)
    host = sum(s.lost_to_host for r in rows for s in r.students)
    print(f"students not served: {lost} of {sum(len(r.students) for r in rows)}; of them {host} lost to a network "
          f"change of this host (Chromium's ERR_NETWORK_CHANGED while Docker started containers), {lost - host} other")
    print()
    print(f"{n} Chromium contexts start their navigation at the same moment; click->visible: until the executed"
          f" notebook's output text is in the page; slider: key press -> the kernel's new output; MB: CDP"
          f" encodedDataLength (as received, headers included); instance requests: direct = every response,"
          f" gateway rows = proxied HTTP + WebSocket + static cache fills (gateway /metrics); ratio: p50"
          f" click->visible over the direct row with the same network conditions. {os.cpu_count()} cores.")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=12, help="students clicking at the same moment")
    parser.add_argument("--mbit", type=float, default=10.0,
                        help="per-student bandwidth of the emulated rows (0: no emulated rows)")
    parser.add_argument("--rows", default="direct,gateway,nginx", help="which rows (comma separated)")
    parser.add_argument("--settle-cap", type=float, default=10.0, help="settings.settle_cap (s)")
    parser.add_argument("--timeout", type=float, default=240.0, help="per student and step (s)")
    parser.add_argument("--start-budget", type=int, default=0,
                        help="settings.start_budget (default 0: the followed budget)")
    parser.add_argument("--rounds", type=int, default=1, help="run the rows this many times (rare failures)")
    parser.add_argument("--smoke", action="store_true",
                        help="1 student, no emulated rows: does the bench still run (CI)")
    arguments = parser.parse_args()
    if arguments.smoke:
        arguments.students, arguments.mbit = 1, 0.0
    sys.exit(asyncio.run(main(arguments)))
