"""`up` builds missing images; an app whose image cannot be built is left out, said in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from swarmpool.catalogue import parse
from swarmpool.launcher import Unavailable, ensure_images

APPS = """
[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
[apps.pluto-demo]
image = "swarmpool/pluto-demo:latest"
build = "{build}"
port = 1234
"""


class Images:
    """Which images this node has (the one thing ensure_images asks the swarm)."""

    def __init__(self, *present: str) -> None:
        self.present = set(present)

    async def has_image(self, image: str) -> bool:
        return image in self.present


async def test_a_recipe_that_cannot_build_here_is_one_line_and_the_others_are_served(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = parse(APPS.format(build="echo 'pluto-demo: no Pluto sources in /x' >&2; exit 3"))
    swarm: Any = Images("swarmpool/echo:latest")
    assert await ensure_images(swarm, catalogue, tmp_path, build=True) == {"pluto-demo"}
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["not serving pluto-demo: building swarmpool/pluto-demo:latest failed (exit 3): "
                     "pluto-demo: no Pluto sources in /x"]


async def test_a_failing_build_shows_its_output_then_one_line(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = parse(APPS.format(build="echo step one; echo step two; exit 1"))
    swarm: Any = Images("swarmpool/echo:latest")
    assert await ensure_images(swarm, catalogue, tmp_path, build=True) == {"pluto-demo"}
    out = capsys.readouterr().out.splitlines()
    assert out[1:] == ["step one", "step two",
                       "not serving pluto-demo: building swarmpool/pluto-demo:latest failed (exit 1): step two"]
    assert out[0].startswith("building swarmpool/pluto-demo:latest for pluto-demo")


async def test_a_successful_build_is_served(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    catalogue = parse(APPS.format(build="echo built"))
    swarm: Any = Images("swarmpool/echo:latest")
    assert await ensure_images(swarm, catalogue, tmp_path, build=True) == set()
    assert "built" in capsys.readouterr().out


async def test_nothing_left_to_serve_is_unavailable(tmp_path: Path) -> None:
    catalogue = parse(APPS.format(build="exit 3"))
    with pytest.raises(Unavailable, match="nothing to serve"):
        await ensure_images(Images(), catalogue.__class__(apps={"pluto-demo": catalogue.apps["pluto-demo"]}),
                            tmp_path, build=True)
    with pytest.raises(Unavailable, match="swarmpool/echo:latest"):  # no recipe: as before, an error
        await ensure_images(Images(), catalogue, tmp_path, build=True)
