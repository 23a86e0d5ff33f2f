"""Benchmark: the Pluto demo warm (what swarmpool hands out) against a cold start, in Chromium.

    python -m bench.bench_pluto [--warm 1] [--more 2] [--build] [--smoke]

Containers of swarmpool/pluto-demo run as swarmpool runs them (1 CPU, the catalogue's memory limit, a
loopback-only published port), each labelled and removed at the end:

- warm: start.jl as shipped: notebook executed, checked and warmed up before the readiness marker;
- cold (the baseline): SWARMPOOL_PLUTO_WARM=0: the notebook executed, nothing warmed (what a student gets
  from a plain Pluto server that has just run the notebook).

Rows: image build time (only with --build: a full rebuild of both images, the .debs from the cache), start
to ready (container start to the marker), click to executed notebook visible (navigation to every cell
rendered, none running or queued), the first and the later slider round trips (a keypress to Julia's new
output on screen), and memory: host memory used before and after k more warm instances (MemTotal - MemAvailable,
divided by k), RSS and PSS of each instance's processes. Other work on the machine moves host memory:
the table also gives the instances' own cgroup memory.
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
from typing import Any

from bench.support import (
    PLUTO_IMAGE,
    REPO,
    chromium,
    ensure_pluto_image,
    local_only,
    move_pluto_slider,
    open_pluto,
    pct,
)
from swarmpool.natsd import free_port

MARKER = "swarmpool: pluto-demo notebook executed"
NOTEBOOK_ID = "5a1f0000-0000-4000-8000-00000000c0de"
LABEL = f"swarmpool.bench=pluto-{os.getpid()}"
MiB = 1024 * 1024


@dataclass
class Instance:
    kind: str  # "warm" or "cold"
    name: str
    port: int
    started: float
    ready: float = 0.0
    memory: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/edit?id={NOTEBOOK_ID}"


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], check=True, capture_output=True, text=True).stdout


def start(kind: str, memory: str) -> Instance:
    port = free_port()
    name = f"sp-bench-pluto-{os.getpid()}-{kind}-{port}"
    env = ["-e", "SWARMPOOL_PLUTO_WARM=0"] if kind == "cold" else []
    began = time.monotonic()
    docker("run", "-d", "--name", name, "--label", LABEL, "--cpus", "1", "--memory", memory, "--cap-drop", "ALL",
           "-p", f"127.0.0.1:{port}:1234", *env, PLUTO_IMAGE)
    return Instance(kind=kind, name=name, port=port, started=began)


async def wait_ready(instance: Instance, timeout: float = 1200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = subprocess.run(["docker", "logs", instance.name], capture_output=True, text=True)
        if MARKER in logs.stdout:
            instance.ready = time.monotonic()
            return
        state = docker("inspect", "-f", "{{.State.Running}}", instance.name).strip()
        if state != "true":
            raise RuntimeError(f"{instance.name} exited before ready:\n{logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        await asyncio.sleep(0.5)
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


def measure_memory(instance: Instance) -> None:
    """RSS and PSS summed over the instance's processes (from /proc), and its cgroup's own memory figure."""
    pids = [line.split()[1] for line in docker("top", instance.name, "-eo", "pid,pid").splitlines()[1:]]
    rss = pss = 0
    for pid in pids:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        fields = {line.split(":")[0]: int(line.split()[1]) for line in rollup.splitlines()[1:] if line.strip()}
        rss += fields.get("Rss", 0) * 1024
        pss += fields.get("Pss", 0) * 1024
    usage = docker("stats", "--no-stream", "--format", "{{.MemUsage}}", instance.name).split("/")[0].strip()
    instance.memory = {"rss": rss / MiB, "pss": pss / MiB, "cgroup": _mib(usage), "processes": len(pids)}


def _mib(text: str) -> float:
    units = {"KiB": 1 / 1024, "MiB": 1.0, "GiB": 1024.0, "B": 1 / MiB}
    for unit, factor in units.items():
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float("nan")


async def browse(browser: Any, instance: Instance, moves: int) -> dict[str, Any]:
    context = await browser.new_context(viewport={"width": 1000, "height": 800})
    try:
        outside = await local_only(context)
        page = await context.new_page()
        began = time.monotonic()
        await open_pluto(page, instance.url, timeout=300)
        visible = time.monotonic() - began
        trips = []
        for i in range(moves):
            seconds, _ = await move_pluto_slider(page, "ArrowRight" if i % 2 == 0 else "ArrowLeft", timeout=300)
            trips.append(seconds)
        return {"visible": visible, "first": trips[0], "later": trips[1:], "outside": outside}
    finally:
        await context.close()


def row(name: str, warm: list[float], cold: list[float], unit: str = "s") -> None:
    def fmt(values: list[float]) -> str:
        if not values:
            return f"{'-':>9} {'-':>9}"
        return f"{statistics.median(values):9.2f} {pct(values, 99):9.2f}"
    ratio = (statistics.median(warm) / statistics.median(cold)) if warm and cold and statistics.median(cold) else None
    print(f"{name:34} {unit:>4} {fmt(warm)} {fmt(cold)} {'' if ratio is None else f'{ratio:9.2f}':>9}")


async def main(args: argparse.Namespace) -> None:
    build_seconds: list[float] = []
    if args.build:
        began = time.monotonic()
        subprocess.run([str(REPO / "apps" / "pluto-demo" / "build.sh"), "--force", "--full"], check=True)
        build_seconds.append(time.monotonic() - began)
    ensure_pluto_image()
    memory = "1g"
    instances: list[Instance] = []
    try:
        before = settled_host_used()
        # first reading: N warm (and the cold baseline, started with them to save a round of minutes)
        warm = [start("warm", memory) for _ in range(args.warm)]
        cold = [start("cold", memory) for _ in range(args.cold)]
        instances += warm + cold
        await asyncio.gather(*(wait_ready(i) for i in warm + cold))
        with_n = settled_host_used()
        # second reading: k more warm
        more = [start("warm", memory) for _ in range(args.more)]
        instances += more
        await asyncio.gather(*(wait_ready(i) for i in more))
        with_more = settled_host_used()
        for instance in instances:
            measure_memory(instance)
        warm_all = warm + more
        results: dict[str, list[dict[str, Any]]] = {"warm": [], "cold": []}
        async with chromium() as browser:
            for instance in [*warm_all[: args.opens], *cold]:
                results[instance.kind].append(await browse(browser, instance, args.moves))
        for instance in cold:  # the baseline's memory once a student has used it (what warm pays up front)
            measure_memory(instance)
    finally:
        for instance in instances:
            subprocess.run(["docker", "rm", "-f", instance.name], capture_output=True)

    def take(kind: str, key: str) -> list[float]:
        values: list[float] = []
        for r in results[kind]:
            values += r[key] if isinstance(r[key], list) else [r[key]]
        return values

    print(f"\nPluto demo ({PLUTO_IMAGE}): {len(warm_all)} warm, {len(cold)} cold (SWARMPOOL_PLUTO_WARM=0) "
          f"containers, 1 CPU / {memory} each; {args.moves} slider moves per open")
    print(f"{'':34} {'':>4} {'warm':>9} {'':>9} {'cold':>9} {'':>9} {'warm/':>9}")
    print(f"{'':34} {'':>4} {'median':>9} {'p99':>9} {'median':>9} {'p99':>9} {'cold':>9}")
    row("image build (full, --build)", build_seconds, [])
    row("start to ready", [i.ready - i.started for i in warm_all], [i.ready - i.started for i in cold])
    row("open to executed notebook visible", take("warm", "visible"), take("cold", "visible"))
    row("first slider round trip", take("warm", "first"), take("cold", "first"))
    row("later slider round trips", take("warm", "later"), take("cold", "later"))
    marginal = (with_more - with_n) / max(args.more, 1) / MiB
    first = len(warm) + len(cold)
    print(f"{'host memory, first ' + str(first) + ' instances':34} {'MiB':>4} {(with_n - before) / first / MiB:9.0f}"
          f" per instance ({len(warm)} warm + {len(cold)} cold)")
    print(f"{'marginal, N+' + str(args.more) + ' warm':34} {'MiB':>4} {marginal:9.0f} per instance")
    for key in ("rss", "pss", "cgroup"):
        row(f"{key.upper() if key != 'cgroup' else 'cgroup memory'} per instance", [i.memory[key] for i in warm_all],
            [i.memory[key] for i in cold], "MiB")
    outside = [u for kind in results for r in results[kind] for u in r["outside"]]
    print(f"requests that would have left the machine: {len(outside)}" + (f" {outside[:5]}" if outside else ""))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=int, default=1, help="N: warm instances for the first memory reading")
    parser.add_argument("--more", type=int, default=2, help="k: warm instances added for the second reading")
    parser.add_argument("--cold", type=int, default=1, help="cold instances (the baseline)")
    parser.add_argument("--opens", type=int, default=2, help="warm instances opened in Chromium")
    parser.add_argument("--moves", type=int, default=6, help="slider moves per open (the first, then later ones)")
    parser.add_argument("--build", action="store_true", help="also time a full rebuild of the images (minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny counts: 1 warm + 1 more + 1 cold, 3 moves")
    args = parser.parse_args()
    if args.smoke:
        args.warm, args.more, args.cold, args.opens, args.moves = 1, 1, 1, 1, 3
    return args


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
