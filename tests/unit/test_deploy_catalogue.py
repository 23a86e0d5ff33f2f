"""Which catalogue a starting function host stores on the bus, and when deploy says its file was deployed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from swarmpool.bus.messages import CatalogueFile
from swarmpool.deploy import Options, Tls, deployed_at, write_files
from swarmpool.host import should_store

STORED = CatalogueFile(text="", source="", version="v1", at=1000.0)


@pytest.mark.parametrize(("stored", "version", "replace", "deployed", "expected"), [
    (None, "v1", False, None, True),  # nothing stored: the first host stores its file
    (STORED, "v2", True, None, True),  # up always stores the file it started with
    (STORED, "v2", False, None, False),  # `swarmpool functions` by hand: follows the stored one
    (STORED, "v2", False, 1500.0, True),  # a redeploy after the stored one: replaces it
    (STORED, "v2", False, 900.0, False),  # an older deploy (or a reload since): keeps the stored one
    (STORED, "v1", False, 1500.0, False),  # the same file: nothing to store
])
def test_should_store(stored: CatalogueFile | None, version: str, replace: bool, deployed: float | None,
                      expected: bool) -> None:
    assert should_store(stored, version, replace, deployed) is expected


def test_deploy_time_kept_while_the_catalogue_is_unchanged(tmp_path: Path) -> None:
    first = deployed_at(tmp_path, "abc")
    assert deployed_at(tmp_path, "abc") == first  # a redeploy of the same file
    assert deployed_at(tmp_path, "def") > first  # a changed file is newer
    assert (tmp_path / "catalogue-deployed.json").stat().st_mode & 0o777 == 0o600


def test_function_hosts_are_told_when_their_catalogue_was_deployed(tmp_path: Path) -> None:
    text = '[apps.echo]\nimage = "swarmpool/echo:latest"\nport = 8888\n'
    compose_file, _ = write_files(Options(image="swarmpool/control:test"), tmp_path, "cat.toml", text, Tls(), None)
    command = json.loads(compose_file.read_text())["services"]["functions"]["command"]
    at = float(command[command.index("--catalogue-deployed-at") + 1])
    again, _ = write_files(Options(image="swarmpool/control:test"), tmp_path, "cat.toml", text, Tls(), None)
    assert json.loads(again.read_text())["services"]["functions"]["command"] == command  # no rolling update
    changed, _ = write_files(Options(image="swarmpool/control:test"), tmp_path, "cat.toml",
                             text.replace("8888", "8889"), Tls(), None)
    later = json.loads(changed.read_text())["services"]["functions"]["command"]
    assert float(later[later.index("--catalogue-deployed-at") + 1]) > at
