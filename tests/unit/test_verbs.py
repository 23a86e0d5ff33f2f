"""The one verb table (bus/verbs.py): requests built from a command line or a form, the dashboard's buttons."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from swarmpool.bus.messages import PauseRequest, ReloadRequest, ScaleRequest
from swarmpool.bus.subjects import Subjects
from swarmpool.bus.verbs import VERBS, request_from
from swarmpool.catalogue import CatalogueError
from swarmpool.gateway.dashboard import Dashboard, _controls

GOOD = '[apps.echo]\nimage = "swarmpool/echo:latest"\nport = 8080\n'


def test_a_form_and_a_command_line_give_the_same_request() -> None:
    from_form = request_from(VERBS["scale"], {"app": "echo", "size": "5"})
    from_cli = request_from(VERBS["scale"], {"app": "echo", "size": 5, "for_seconds": None})
    assert from_form == from_cli == ScaleRequest(app="echo", size=5)
    assert request_from(VERBS["scale"], {"app": "echo", "size": 5, "for_seconds": "90m"}).for_seconds == 5400  # type: ignore[attr-defined]
    assert request_from(VERBS["pause"], {"app": None, "all": True}) == PauseRequest(all=True)


@pytest.mark.parametrize("values, words", [
    ({"app": "echo", "size": "many"}, "size"),
    ({"app": "echo"}, "size"),
    ({"app": "echo", "size": 1, "for_seconds": "soon"}, "duration"),
    ({"app": "Not An App", "size": 1}, "app"),
])
def test_bad_values_are_a_value_error_naming_the_field(values: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        request_from(VERBS["scale"], values)


def test_reload_reads_and_checks_the_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.toml", tmp_path / "bad.toml"
    good.write_text(GOOD)
    bad.write_text(GOOD.replace("8080", "80800"))
    request = request_from(VERBS["reload"], {"text": str(good)})
    assert request == ReloadRequest(text=GOOD, source=str(good.resolve()))
    with pytest.raises(CatalogueError, match="apps.echo.port"):
        request_from(VERBS["reload"], {"text": str(bad)})


def test_the_dashboard_offers_the_verbs_the_table_gives_it() -> None:
    dash = Dashboard(bus=None, subjects=Subjects("sp"), key=b"k", catalogue_path="/srv/c.toml")  # type: ignore[arg-type]
    dash.pools = {"echo": None, "demo": None}  # type: ignore[dict-item]
    html = _controls(dash, "token")
    buttons = re.findall(r'<button name="do" value="([a-z]+)" data-app="([a-z-]*)"', html)
    per_app = [v.name for v in VERBS.values() if v.dashboard == "per_app"]
    assert buttons == [(v, a) for a in ("echo", "demo") for v in per_app] + [("reload", "")]
    assert html.count('<input name="size" type="number"') == 2  # scale asks for its size, on each row
    dash.catalogue_path = None
    assert "reload" not in _controls(dash, "token")
