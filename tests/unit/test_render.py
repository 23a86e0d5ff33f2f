"""nginx/render.py refuses options that would make a config nginx rejects, naming the option (exit 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RENDER = Path(__file__).resolve().parents[2] / "nginx" / "render.py"


@pytest.mark.parametrize("extra, option", [
    (["--launch-burst", "0"], "--launch-burst"),
    (["--launch-burst", "-3"], "--launch-burst"),
    (["--launch-rate", "0r/s"], "--launch-rate"),
    (["--launch-rate", "fast"], "--launch-rate"),
    (["--worker-connections", "0"], "--worker-connections"),
    (["--workers", "0"], "--workers"),
    (["--log-level", "loud"], "--log-level"),
    (["--listen-http", "127.0.0.1:99999"], "--listen-http"),
    (["--metrics-allow", "not-an-address"], "--metrics-allow"),
])
def test_bad_options_name_the_option_and_write_nothing(tmp_path: Path, extra: list[str], option: str) -> None:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(RENDER), "--http-only", "--gateway", "127.0.0.1:8000",
                             "--out", str(out), *extra], capture_output=True, text=True)
    assert result.returncode == 2
    assert option in result.stderr
    assert not out.exists()


def test_a_gateway_without_a_port_is_refused(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(RENDER), "--http-only", "--gateway", "localhost",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 2 and "--gateway" in result.stderr


def test_good_options_render(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(RENDER), "--http-only", "--gateway", "127.0.0.1:8000",
                             "--listen-http", "127.0.0.1:8080", "--launch-burst", "1", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nginx.conf").exists()
