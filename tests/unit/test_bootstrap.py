"""bootstrap.sh starts the Docker engine in a session of its own, so Ctrl-C of `bootstrap.sh up`
reaches swarmpool only (the engine once died with it and swarmpool's cleanup then failed); a swarm it
initialises listens on loopback only."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

FAKE_DOCKER = """#!/bin/bash
# a docker CLI whose engine is "up" once the fake dockerd has written its marker; its swarm is in state
# $FAKE_SWARM (default active); every `docker swarm ...` is written to $FAKE_DIR/swarm.args
[[ -e "$FAKE_DIR/dockerd.started" ]] || exit 1
[[ "$*" == *LocalNodeState* ]] && echo "${FAKE_SWARM:-active}"
[[ "$1" == swarm ]] && echo "$*" >> "$FAKE_DIR/swarm.args"
exit 0
"""
FAKE_DOCKERD = """#!/bin/bash
echo $$ > "$FAKE_DIR/dockerd.pid"
ps -o sid=,pgid= -p $$ > "$FAKE_DIR/dockerd.started.tmp"
mv "$FAKE_DIR/dockerd.started.tmp" "$FAKE_DIR/dockerd.started"
exec sleep 60
"""


def _fakes(tmp_path: Path, swarm: str = "active") -> dict[str, str]:
    """Fake docker and dockerd on PATH, a venv that counts as installed: the environment to run bootstrap in."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("docker", FAKE_DOCKER), ("dockerd", FAKE_DOCKERD)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    venv = tmp_path / "venv"  # a venv that counts as installed: bootstrap installs nothing
    venv.mkdir()
    stamp = hashlib.sha1((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:12]
    (venv / f".installed-{stamp}").touch()
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_DIR": str(tmp_path),
            "SWARMPOOL_VENV": str(venv), "SWARMPOOL_DOCKERD_LOG": str(tmp_path / "dockerd.log"), "FAKE_SWARM": swarm}


def _stop_fake_engine(tmp_path: Path) -> None:
    pid_file = tmp_path / "dockerd.pid"
    deadline = time.monotonic() + 5
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_the_engine_runs_in_its_own_session_and_bootstrap_says_where_its_log_is(tmp_path: Path) -> None:
    env = _fakes(tmp_path)
    log = tmp_path / "dockerd.log"
    try:
        result = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "shell"], env=env, capture_output=True,
                                text=True, timeout=60, start_new_session=True)
        assert result.returncode == 0, result.stderr
        assert f"its log is {log}" in result.stderr
        sid, pgid = (int(x) for x in (tmp_path / "dockerd.started").read_text().split())
        engine = int((tmp_path / "dockerd.pid").read_text())
        # the engine leads a session of its own (before: it shared bootstrap's, so Ctrl-C stopped it)
        assert sid == pgid == engine
    finally:
        _stop_fake_engine(tmp_path)
    assert not (tmp_path / "swarm.args").exists()  # an active swarm is left as it is


def test_a_new_swarm_listens_on_loopback_only(tmp_path: Path) -> None:
    env = _fakes(tmp_path, swarm="inactive")
    try:
        result = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "shell"], env=env, capture_output=True,
                                text=True, timeout=60, start_new_session=True)
        assert result.returncode == 0, result.stderr
    finally:
        _stop_fake_engine(tmp_path)
    args = (tmp_path / "swarm.args").read_text().split()
    assert args[:2] == ["swarm", "init"]
    options = dict(zip(args[2::2], args[3::2]))
    assert options == {"--advertise-addr": "127.0.0.1", "--listen-addr": "127.0.0.1:2377",
                       "--data-path-addr": "127.0.0.1"}


FAKE_SS = """#!/usr/bin/env python3
# ss -H -l with -t and/or -u and a filter naming ports: the sockets of FAKE_SS on those ports, with the Netid
# column only when both kinds are asked for (as ss prints them)
import os, re, sys
flags = "".join(a[1:] for a in sys.argv[1:] if a.startswith("-") and not a.startswith("--"))
ports = set(re.findall(r":(\\d+)", " ".join(a for a in sys.argv[1:] if not a.startswith("-"))))
kinds = {k for k, f in (("tcp", "t"), ("udp", "u")) if f in flags}
for line in os.environ["FAKE_SS"].splitlines():
    netid, rest = line.split(" ", 1)
    if netid in kinds and rest.split()[3].rsplit(":", 1)[1] in ports:
        print(line if len(kinds) > 1 else rest)
"""


@pytest.mark.parametrize("sockets, reported", [
    ("tcp LISTEN 0 4096 127.0.0.1:2377 *:*\ntcp LISTEN 0 4096 *:7946 *:*\nudp UNCONN 0 0 *:7946 *:*", True),
    ("tcp LISTEN 0 4096 127.0.0.1:2377 *:*\nudp UNCONN 0 0 10.0.0.5:7946 *:*", True),  # gossip over UDP
    ("tcp LISTEN 0 4096 127.0.0.1:2377 *:*\ntcp LISTEN 0 4096 127.0.0.1:7946 *:*\nudp UNCONN 0 0 127.0.0.1:7946 *:*",
     False),
])
def test_an_existing_swarm_whose_control_or_gossip_port_is_beyond_loopback_is_reported(
        tmp_path: Path, sockets: str, reported: bool) -> None:
    env = _fakes(tmp_path)
    ss = tmp_path / "bin" / "ss"
    ss.write_text(FAKE_SS)
    ss.chmod(0o755)
    try:
        result = subprocess.run(["bash", str(ROOT / "bootstrap.sh"), "shell"], env={**env, "FAKE_SS": sockets},
                                capture_output=True, text=True, timeout=60, start_new_session=True)
        assert result.returncode == 0, result.stderr
    finally:
        _stop_fake_engine(tmp_path)
    assert ("the existing swarm listens beyond loopback" in result.stderr) == reported, result.stderr
