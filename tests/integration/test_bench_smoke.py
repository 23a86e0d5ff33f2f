"""Benches cannot rot: every bench that `just --list` offers runs in its smoke mode (tiny counts) here, in CI,
and must exit 0 and print its table. Their full runs stay out of CI (bench/, `just bench-*`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.docker, pytest.mark.bench_smoke]

# just recipe -> (the smoke's arguments to python, a line of the table it prints)
SMOKES: dict[str, tuple[list[str], str]] = {
    "bench-ready": (["-m", "bench.bench_ready", "--smoke"], "subscribed ($JS.API.INFO)"),
    "bench-topup-lock": (["-m", "bench.bench_topup_lock", "--smoke"], "counting: mutex + catch-up, 1 host"),
    "bench-proxy": (["-m", "bench.bench_proxy", "--smoke"], "nginx -> gateway"),
    "bench-claim": (["-m", "bench.bench_claim", "--smoke"], "| click, sequential"),
    "bench-scale": (["-m", "bench.bench_scale", "--smoke"], "| click -> 303 |"),
    "bench-notebook": (["-m", "bench.bench_click_to_notebook", "--smoke"], "click via gateway (in page)"),
    "bench-class": (["-m", "bench.bench_class", "--smoke"], "| nginx + gateway"),
    "bench-lecture": (["-m", "bench.bench_lecture", "--smoke"], "| queue order violations"),
    "bench-warm": (["-m", "bench.bench_warm", "--smoke"], "| swarmpool warm (admin scale 0 -> N)"),
    # the stack bench: the control image of this checkout, deployed on this machine's swarm (the slow one)
    "bench-claim-stack": (["-m", "bench.bench_claim", "--smoke", "--stack"], "`swarmpool deploy` on this node"),
    # the lecture on `swarmpool deploy` on the 2-node swarm of namespaced engines (also in the cluster lane: below)
    "bench-lecture-cluster": (["-m", "bench.bench_lecture", "--smoke", "--cluster"], "| queue order violations"),
    # Pluto: a warm, one more and a cold instance, then one click through the gateway (seconds each on the system image)
    "bench-pluto": (["-m", "bench.bench_pluto", "--smoke"], "first slider move, page idle, gateway"),
}
SLOW = {"bench-class": 900, "bench-claim-stack": 1200, "bench-pluto": 900, "bench-lecture-cluster": 900}  # seconds; the
# others within the suite's 300
CLUSTER = {"bench-lecture-cluster"}  # builds the 2-node swarm of tests/cluster.py: in the cluster lane too (one at a time)


def test_every_bench_in_just_list_has_a_smoke() -> None:
    # the venv's just (rust-just): CI runs pytest by the venv's python, with the venv not on PATH
    venv_just = Path(sys.executable).parent / "just"
    just = str(venv_just) if venv_just.exists() else "just"
    recipes = subprocess.run([just, "--summary"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    benches = {r for r in recipes if r.startswith("bench-") and r != "bench-smoke"}
    assert benches, f"no bench recipes in `just --summary`: {recipes}"
    assert benches == set(SMOKES), f"benches without a smoke: {sorted(benches - set(SMOKES))}; " \
                                   f"smokes of no bench: {sorted(set(SMOKES) - benches)}"


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=[pytest.mark.timeout(SLOW.get(r, 300)),
                                                            *([pytest.mark.cluster] if r in CLUSTER else [])])
                                    for r in SMOKES])
def test_bench_smoke_runs_and_prints_its_table(recipe: str) -> None:
    args, table_line = SMOKES[recipe]
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=SLOW.get(recipe, 300) - 10, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    tail = (result.stdout[-3000:] + "\n--- stderr ---\n" + result.stderr[-3000:])
    assert result.returncode == 0, f"{recipe} smoke exited {result.returncode}:\n{tail}"
    assert table_line in result.stdout, f"{recipe} smoke printed no table (no {table_line!r}):\n{tail}"
