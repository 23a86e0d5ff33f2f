"""Replicated state on a deployed stack (issue 10): buckets and the event log get one copy per NATS server
of the deploy; `up` (one server) keeps one. Pure: no Docker, no NATS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmpool.bus.state import REPLICAS_ENV, stream_replicas
from swarmpool.deploy import Options, Tls, write_files


@pytest.mark.parametrize("value, replicas", [(None, 1), ("", 1), ("1", 1), ("3", 3), (" 3 ", 3)])
def test_stream_replicas_from_the_environment(monkeypatch: pytest.MonkeyPatch, value: str | None,
                                              replicas: int) -> None:
    if value is None:
        monkeypatch.delenv(REPLICAS_ENV, raising=False)
    else:
        monkeypatch.setenv(REPLICAS_ENV, value)
    assert stream_replicas() == replicas


@pytest.mark.parametrize("value", ["0", "6", "three", "-1", "2.5"])
def test_a_bad_replica_count_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(REPLICAS_ENV, value)
    with pytest.raises(ValueError, match=REPLICAS_ENV):
        stream_replicas()


@pytest.mark.parametrize("servers", [1, 3])
def test_deploy_tells_function_hosts_how_many_copies_to_keep(tmp_path: Path, servers: int) -> None:
    catalogue = '[apps.echo]\nimage = "swarmpool/echo:latest"\nport = 8888\n'
    compose_file, _ = write_files(Options(image="swarmpool/control:test", nats_replicas=servers), tmp_path,
                                  "cat.toml", catalogue, Tls(), None)
    spec = json.loads(compose_file.read_text())
    assert spec["services"]["functions"]["environment"] == {REPLICAS_ENV: str(servers)}


def test_deploy_prints_the_operators_next_steps(tmp_path: Path) -> None:
    from swarmpool.deploy import next_steps

    options = Options(stack="cls", port=18000)
    without = next_steps(options, tmp_path)
    assert "port 18000" in without and "--nats-port" in without and "swarmpool dashboard" in without
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "operator.json").write_text("{}")
    with_operator = next_steps(options, tmp_path)
    assert f"swarmpool admin reload FILE --namespace cls --state-dir {tmp_path}" in with_operator
    assert f"swarmpool dashboard --namespace cls --state-dir {tmp_path}" in with_operator
