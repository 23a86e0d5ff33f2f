"""Benchmark: the Pluto demo warm (what swarmpool hands out) against a cold start, in Chromium.

    python -m bench.bench_pluto [--warm 1] [--more 2] [--cold 1] [--gateway 1] [--build] [--smoke]
                                [--baseline nowarm|plain] [--no-sysimage] [--no-warmup]

Containers of swarmpool/pluto-demo (SWARMPOOL_PLUTO_IMAGE: another tag) run as swarmpool runs them (1 CPU,
the catalogue's memory limit, a loopback-only published port), each labelled and removed at the end:

- warm: the image as shipped: Julia on the image's system image, the notebook executed, checked and warmed up
  before the readiness marker (--no-sysimage: Julia's own system image; --no-warmup: no protocol warm-up);
- cold, the baseline (--baseline): `nowarm` (default) the same image with SWARMPOOL_PLUTO_WARM=0 (executed,
  nothing warmed), `plain` also without the system image (what a plain Pluto server gives: minutes to start).

Then (--gateway G) the whole swarmpool (nats-server, functions, gateway as separate processes) with a warm
pool of G on the real swarm: G clicks on /launch/pluto-demo, as a student gets them (the gateway's static
cache serves Pluto's bundle gzipped).

Rows: image build time (only with --build), start to ready (container start to the marker), click/open to
executed notebook visible (navigation to every cell rendered, none running or queued), the first slider round
trip (a keypress to Julia's new output on screen) moved once the page is idle, i.e. its start-up WebSocket
exchange is over (no frame either way for 0.5 s, and at least 1 s after the notebook became visible: a
student reads before moving), the same moved at once (the bench's old way), later round trips; memory: host
memory used before and after k more warm instances (MemTotal - MemAvailable, divided by k), RSS, PSS,
private memory and the instance's cgroup figure, and what of RSS is the shared system image.

Chromium's guard intercepts nothing (Playwright routing slows every request): requests for anything but
loopback go to a dead loopback proxy and fail there, and a recorder fails the run on any such request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Awaitable, Callable
from typing import Any

from bench.support import (
    PLUTO_APP,
    PLUTO_IMAGE,
    REPO,
    chromium,
    dead_proxy_args,
    ensure_pluto_image,
    move_pluto_slider,
    open_pluto,
    pct,
    pluto_catalogue,
    record_outside,
)
from swarmpool.natsd import free_port

MARKER = "swarmpool: pluto-demo notebook executed"
NOTEBOOK_ID = "5a1f0000-0000-4000-8000-00000000c0de"
LABEL = f"swarmpool.bench=pluto-{os.getpid()}"
SYSIMAGE = "/opt/pluto-sys/pluto.so"
MiB = 1024 * 1024
QUIET = 0.5  # s without a WebSocket frame: the page's start-up exchange is over
READING = 1.0  # s a student at least looks at the page before touching the slider


@dataclass
class Instance:
    kind: str  # "warm" or "cold"
    name: str
    port: int
    started: float
    ready: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # start()'s arguments: a replacement starts alike

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/edit?id={NOTEBOOK_ID}"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def start(kind: str, memory: str, *, sysimage: bool, warmup: bool) -> Instance:
    port = free_port()
    name = f"sp-bench-pluto-{os.getpid()}-{kind}-{port}"
    env = [] if warmup else ["-e", "SWARMPOOL_PLUTO_WARM=0"]
    command = [] if sysimage else ["julia", "--startup-file=no", "/app/start.jl"]
    began = time.monotonic()
    docker("run", "-d", "--name", name, "--label", LABEL, "--cpus", "1", "--memory", memory, "--cap-drop", "ALL",
           "-p", f"127.0.0.1:{port}:1234", *env, PLUTO_IMAGE, *command)
    return Instance(kind=kind, name=name, port=port, started=began,
                    options={"memory": memory, "sysimage": sysimage, "warmup": warmup})


REPLACED: list[str] = []  # starts that exited before ready and were replaced (as the keeper replaces them)


async def wait_ready(instance: Instance, timeout: float = 1200, replacements: int = 2) -> None:
    """Until the marker; a start that exits first (start.jl refuses an errored or unfinished warm-up) is
    replaced by a new one, at most `replacements` times, and counted: swarmpool's keeper does the same."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = subprocess.run(["docker", "logs", instance.name], capture_output=True, text=True)
        if MARKER in logs.stdout:
            instance.ready = time.monotonic()
            return
        state = docker("inspect", "-f", "{{.State.Running}}", instance.name).strip()
        if state != "true":
            tail = f"{logs.stdout[-2000:]}{logs.stderr[-2000:]}"
            if len(REPLACED) >= replacements:
                raise RuntimeError(f"{instance.name} exited before ready:\n{tail}")
            REPLACED.append(instance.name)
            print(f"{instance.name} exited before ready (replaced; its log's end below)\n{tail[-800:]}", flush=True)
            subprocess.run(["docker", "rm", "-f", instance.name], capture_output=True)
            again = start(instance.kind, **instance.options)
            instance.name, instance.port, instance.started = again.name, again.port, again.started
        await asyncio.sleep(0.25)
    raise TimeoutError(f"{instance.name} not ready within {timeout:.0f} s")


def host_used() -> int:
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return (int(info["MemTotal"].split()[0]) - int(info["MemAvailable"].split()[0])) * 1024


def settled_host_used(samples: int = 5) -> float:
    """Host memory used, the median of a few reads (page cache and other work move it)."""
    values = []
    for _ in range(samples):
        values.append(host_used())
        time.sleep(0.2)  # spacing between reads of a moving quantity, not a wait for a condition
    return statistics.median(values)


def _sysimage_rss(pid: str) -> int:
    """KiB of the process's RSS that are pages of the system image file (shared by every instance)."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        parts = line.split()
        if parts and not parts[0].endswith(":"):  # a mapping's header: address range, flags, ..., path
            inside = line.rstrip().endswith(SYSIMAGE)
        elif inside and parts[0] == "Rss:":
            total += int(line.split()[1])
    return total


def measure_memory(instance: Instance) -> None:
    """RSS, PSS and private memory summed over the instance's processes (from /proc), the part of RSS that is
    the system image file, and its cgroup's own memory figure."""
    pids = [line.split()[1] for line in docker("top", instance.name, "-eo", "pid,pid").splitlines()[1:]]
    totals = {"rss": 0, "pss": 0, "private": 0, "sysimage": 0}
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            totals["sysimage"] += _sysimage_rss(pid) * 1024
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.strip()}
        totals["rss"] += fields.get("Rss", 0) * 1024
        totals["pss"] += fields.get("Pss", 0) * 1024
        totals["private"] += (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) * 1024
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", instance.name).split("/")[0].strip()
    instance.memory = {k: v / MiB for k, v in totals.items()}
    instance.memory.update(cgroup=_mib(usage), processes=len(pids))


def _mib(text: str) -> float:
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / MiB}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float("nan")


async def wait_page_idle(frames: list[float], sockets: list[int], visible_at: float, timeout: float = 60) -> float:
    """Wait until the page's start-up WebSocket exchange is over (its WebSocket open, no frame either way for
    QUIET s) and a student has had READING s to look at it; the seconds from visible until the last frame."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        last = max(frames, default=visible_at)
        if now - visible_at >= READING and now - last >= QUIET and sockets[0] > 0:
            return max(0.0, last - visible_at)
        if now > deadline:
            raise TimeoutError(f"the page's WebSocket never went quiet for {QUIET} s within {timeout:.0f} s")
        await asyncio.sleep(0.02)


class NetworkChanged(Exception):
    """Chromium dropped the page's requests because the host's network changed (Docker adds and removes
    interfaces all the time on a shared machine): the sample says nothing about Pluto and is taken again."""


REDONE: list[str] = []  # samples taken again, and why


async def browse(browser: Any, url: str, moves: int, *, at_once: bool = False,
                 before_moving: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """`browse_once`, taken again (up to 3 times) when Chromium saw the host's network change (a failed load, or
    the page's WebSocket closed: Pluto reconnects after seconds, which would be counted as Julia's time)."""
    for attempt in range(4):
        try:
            result = await browse_once(browser, url, moves, at_once=at_once, before_moving=before_moving)
        except NetworkChanged as err:
            REDONE.append(f"{url}: {err}")
            if attempt == 3:
                raise
            continue
        if not result["closed"] or attempt == 3:  # the last try counts, its closed WebSockets printed
            return result
        REDONE.append(f"{url}: the page's WebSocket closed {result['closed']} times during the sample")
    raise AssertionError("unreachable")


async def browse_once(browser: Any, url: str, moves: int, *, at_once: bool = False,
                      before_moving: Callable[[], Awaitable[None]] | None = None) -> dict[str, Any]:
    """Open url in a fresh context until the executed notebook is visible, wait until the page is idle (or not,
    at_once), move the slider `moves` times; the times and any request that would have left the machine."""
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        outside = record_outside(context)
        page = await context.new_page()
        frames: list[float] = []
        sent: list[float] = []
        received: list[float] = []
        sockets = [0, 0]  # open now, closed so far
        failed: list[str] = []
        page.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))

        def note(times: list[float]) -> None:
            frames.append(time.monotonic())
            times.append(frames[-1])

        def closed(_: Any) -> None:
            sockets[0] -= 1
            sockets[1] += 1

        def watch(ws: Any) -> None:
            sockets[0] += 1
            ws.on("close", closed)
            ws.on("framesent", lambda _: note(sent))
            ws.on("framereceived", lambda _: note(received))

        page.on("websocket", watch)
        began = time.monotonic()
        try:
            await open_pluto(page, url, timeout=90)
        except Exception:
            changed = [f for f in failed if "ERR_NETWORK_CHANGED" in f]
            if changed:
                raise NetworkChanged(changed[0]) from None
            raise
        visible_at = time.monotonic()
        if before_moving is not None:
            await before_moving()
        try:
            startup = 0.0 if at_once else await wait_page_idle(frames, sockets, visible_at)
        except TimeoutError:
            if sockets[1]:
                raise NetworkChanged(f"the page's WebSocket closed {sockets[1]} times and stayed closed") from None
            raise
        trips = []
        pressed = time.monotonic()
        for i in range(moves):
            try:
                seconds, _ = await move_pluto_slider(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft", timeout=60)
            except Exception:
                if sockets[1]:
                    raise NetworkChanged(f"the page's WebSocket closed {sockets[1]} times; a move never came back") \
                        from None
                raise
            trips.append(seconds)
        # where the first move's time went: the browser until its message left, then until Pluto's first answer
        out = next((t for t in sent if t >= pressed), pressed)
        back = next((t for t in received if t >= out), out)
        return {"visible": visible_at - began, "first": trips[0], "later": trips[1:], "outside": outside,
                "startup": startup, "url": page.url, "closed": sockets[1],
                "to_sent": out - pressed, "to_answer": back - out}
    finally:
        await context.close()


def row(name: str, warm: list[float], cold: list[float], unit: str = "s") -> None:
    def fmt(values: list[float]) -> str:
        if not values:
            return f"{'-':>9} {'-':>9}"
        return f"{statistics.median(values):9.2f} {pct(values, 99):9.2f}"
    ratio = (statistics.median(warm) / statistics.median(cold)) if warm and cold and statistics.median(cold) else None
    print(f"{name:38} {unit:>4} {fmt(warm)} {fmt(cold)} {'' if ratio is None else f'{ratio:9.2f}':>9}")


async def through_gateway(browser: Any, count: int, moves: int) -> list[dict[str, Any]]:
    """The whole swarmpool with a warm pool of `count`: one click each on /launch/pluto-demo."""
    from bench.bench_proxy import separate_stack

    catalogue = pluto_catalogue(size=count, max_=2 * count + 1, parallel=count)  # room to refill after every claim
    results = []
    async with separate_stack(catalogue) as stack:
        began = time.monotonic()
        await stack.wait_ready(PLUTO_APP, count, timeout=1800)
        print(f"gateway: {count} warm instances ready after {time.monotonic() - began:.0f} s", flush=True)
        async def refilled() -> None:
            # the claim makes the keeper start a replacement; creating its container changes the host's network
            # interfaces, and Chromium (on this very host, unlike a student's) then drops the page's WebSocket
            # and Pluto reconnects: the student's first move is measured once the pool is full again
            await stack.wait_ready(PLUTO_APP, count, timeout=600)

        for _ in range(count):
            results.append(await browse(browser, f"{stack.gateway_url}/launch/{PLUTO_APP}", moves,
                                        before_moving=refilled))
    return results


async def main(args: argparse.Namespace) -> None:
    load = [os.getloadavg()]
    build_seconds: list[float] = []
    if args.build:
        began = time.monotonic()
        subprocess.run([str(REPO / "apps" / "pluto-demo" / "build.sh"), "--force", "--tag", PLUTO_IMAGE], check=True)
        build_seconds.append(time.monotonic() - began)
    ensure_pluto_image()
    memory = "1g"
    instances: list[Instance] = []
    warm_opts = {"sysimage": not args.no_sysimage, "warmup": not args.no_warmup}
    cold_opts = {"sysimage": args.baseline == "nowarm", "warmup": False}
    results: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": [], "at once": [], "gateway": []}
    async with chromium(*dead_proxy_args()) as browser:
        try:
            before = settled_host_used()
            # first reading: N warm (and the cold baseline, started with them to save a round of minutes)
            warm = [start("warm", memory, **warm_opts) for _ in range(args.warm)]
            cold = [start("cold", memory, **cold_opts) for _ in range(args.cold)]
            instances += warm + cold
            await asyncio.gather(*(wait_ready(i) for i in warm + cold))
            with_n = settled_host_used()
            # second reading: k more warm
            more = [start("warm", memory, **warm_opts) for _ in range(args.more)]
            instances += more
            await asyncio.gather(*(wait_ready(i) for i in more))
            with_more = settled_host_used()
            load.append(os.getloadavg())
            for instance in instances:
                measure_memory(instance)
            warm_all = warm + more
            opened = warm_all[: args.opens]
            for instance in opened[1:] if len(opened) > 1 else []:  # the bench's old way, for comparison
                results["at once"].append(await browse(browser, instance.url, args.moves, at_once=True))
            for instance in [*opened[:1], *cold]:
                results[instance.kind].append(await browse(browser, instance.url, args.moves))
            for instance in cold:  # the baseline's memory once a student has used it (what warm pays up front)
                measure_memory(instance)
        finally:
            for instance in instances:
                subprocess.run(["docker", "rm", "-f", instance.name], capture_output=True)
        if args.gateway:
            results["gateway"] = await through_gateway(browser, args.gateway, args.moves)
    load.append(os.getloadavg())

    def take(kind: str, key: str) -> list[float]:
        values: list[float] = []
        for r in results[kind]:
            values += r[key] if isinstance(r[key], list) else [r[key]]
        return values

    warm_desc = "system image" if warm_opts["sysimage"] else "no system image"
    warm_desc += ", warm-up" if warm_opts["warmup"] else ", no warm-up"
    cold_desc = "system image, no warm-up" if cold_opts["sysimage"] else "no system image, no warm-up"
    print(f"\nPluto demo ({PLUTO_IMAGE}): {len(warm_all)} warm ({warm_desc}), {len(cold)} cold ({cold_desc}) "
          f"containers, 1 CPU / {memory} each; {args.moves} slider moves per open; {args.gateway} clicks through "
          f"the gateway; load average {', '.join(f'{a[0]:.1f}' for a in load)} (start, after starts, end)")
    print(f"{'':38} {'':>4} {'warm':>9} {'':>9} {'cold':>9} {'':>9} {'warm/':>9}")
    print(f"{'':38} {'':>4} {'median':>9} {'p99':>9} {'median':>9} {'p99':>9} {'cold':>9}")
    row("image build (--build)", build_seconds, [])
    row("start to ready", [i.ready - i.started for i in warm_all], [i.ready - i.started for i in cold])
    row("click to visible, through the gateway", take("gateway", "visible"), take("cold", "visible"))
    row("open to visible, direct", take("warm", "visible"), take("cold", "visible"))
    row("first slider move, page idle, gateway", take("gateway", "first"), take("cold", "first"))
    row("first slider move, page idle, direct", take("warm", "first"), take("cold", "first"))
    row("first slider move, at once, direct", take("at once", "first"), [])
    row("later slider moves", take("warm", "later") + take("gateway", "later"), take("cold", "later"))
    row("page start-up exchange after visible", take("warm", "startup") + take("gateway", "startup"),
        take("cold", "startup"))
    row("first move: keypress to message sent", take("warm", "to_sent") + take("gateway", "to_sent"),
        take("cold", "to_sent"))
    row("first move: message to Pluto's answer", take("warm", "to_answer") + take("gateway", "to_answer"),
        take("cold", "to_answer"))
    marginal = (with_more - with_n) / max(args.more, 1) / MiB
    first = len(warm) + len(cold)
    print(f"{'host memory, first ' + str(first) + ' instances':38} {'MiB':>4} {(with_n - before) / first / MiB:9.0f}"
          f" per instance ({len(warm)} warm + {len(cold)} cold)")
    print(f"{'marginal, N+' + str(args.more) + ' warm':38} {'MiB':>4} {marginal:9.0f} per instance")
    for key, name in (("rss", "RSS"), ("pss", "PSS"), ("private", "private (RSS not shared)"),
                      ("sysimage", "of RSS: the system image file"), ("cgroup", "cgroup memory")):
        row(f"{name} per instance", [i.memory[key] for i in warm_all], [i.memory[key] for i in cold], "MiB")
    outside = [u for kind in results for r in results[kind] for u in r["outside"]]
    print(f"starts that exited before ready and were replaced: {len(REPLACED)}")
    print(f"requests that would have left the machine: {len(outside)}" + (f" {outside[:5]}" if outside else ""))
    closed = [r["closed"] for kind in results for r in results[kind]]
    print(f"page WebSockets closed (Chromium saw the host's network change) and reopened by Pluto: {sum(closed)}")
    if REDONE:
        print(f"samples taken again (Chromium saw the host's network change mid-load): {len(REDONE)} {REDONE[:3]}")
    if outside:
        raise SystemExit(f"requests left (or tried to leave) the machine: {outside[:5]}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=1, help="N: warm instances for the first memory reading")
    parser.add_argument("--more", type=int, default=2, help="k: warm instances added for the second reading")
    parser.add_argument("--cold", type=int, default=1, help="cold instances (the baseline)")
    parser.add_argument("--opens", type=int, default=2, help="warm instances opened directly in Chromium (the "
                        "first once the page is idle, the others moved at once)")
    parser.add_argument("--gateway", type=int, default=1, help="G: clicks through the gateway (a pool of G)")
    parser.add_argument("--moves", type=int, default=6, help="slider moves per open (the first, then later ones)")
    parser.add_argument("--baseline", choices=("nowarm", "plain"), default="nowarm",
                        help="cold: the image without the warm-up, or plain: also without the system image")
    parser.add_argument("--no-sysimage", action="store_true", help="warm instances on Julia's own system image")
    parser.add_argument("--no-warmup", action="store_true", help="warm instances without the protocol warm-up")
    parser.add_argument("--build", action="store_true", help="also time a rebuild of the image (minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: 1 warm + 1 more + 1 cold, 1 gateway click")
    args = parser.parse_args()
    if args.smoke:
        args.warm, args.more, args.cold, args.opens, args.gateway, args.moves = 1, 1, 1, 1, 1, 3
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
