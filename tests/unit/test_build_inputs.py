"""apps/base/lib.sh: an app image is rebuilt when what it is made of changed, skipped only when it is current.

A machine that already holds an image would otherwise keep running it after a fix to its requirements
(the voila-demo pin of jupyterlab_widgets). `docker` is a stub here: it answers the image's label, or
fails as for a missing image.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from bench.support import REPO

LIB = REPO / "apps" / "base" / "lib.sh"


def build_script(tmp_path: Path, label: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Source lib.sh and run the voila-demo build's first steps against a stub `docker` answering `label`."""
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\n" + ("exit 1\n" if label is None else f"echo '{label}'\n"))
    stub.chmod(0o755)
    script = (f'source "{LIB}"\n'
              f'SWARMPOOL_INPUTS=$(inputs_digest "{tmp_path / "app"}" Dockerfile requirements.txt)\n'
              f'echo "digest $SWARMPOOL_INPUTS"\n'
              f'skip_if_built demo swarmpool/demo:latest {" ".join(args)}\n'
              'echo "building"\n')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{stub.parent}:{os.environ['PATH']}"})


def app(tmp_path: Path, requirements: str) -> None:
    folder = tmp_path / "app"
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text("FROM swarmpool/base:bookworm\n")
    (folder / "requirements.txt").write_text(requirements)


def digest_of(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.splitlines()[0].removeprefix("digest ")


def test_a_missing_image_is_built(tmp_path: Path) -> None:
    app(tmp_path, "jupyterlab_widgets==3.0.16\n")
    result = build_script(tmp_path, None)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "building", result


def test_an_image_built_from_these_inputs_is_skipped_unless_forced(tmp_path: Path) -> None:
    app(tmp_path, "jupyterlab_widgets==3.0.16\n")
    digest = digest_of(build_script(tmp_path, None))
    current = build_script(tmp_path, digest)
    assert current.returncode == 0 and "building" not in current.stdout, current
    assert "exists and is current, skipping" in current.stdout
    assert build_script(tmp_path, digest, "--force").stdout.splitlines()[-1] == "building"


def test_an_image_built_from_other_inputs_is_rebuilt(tmp_path: Path) -> None:
    app(tmp_path, "jupyterlab_widgets==3.0.17\n")
    old = digest_of(build_script(tmp_path, None))
    app(tmp_path, "jupyterlab_widgets==3.0.16\n")  # the fix lands; the machine still holds the old image
    result = build_script(tmp_path, old)
    assert digest_of(result) != old
    assert result.stdout.splitlines()[-1] == "building", result
    assert f"was built from other inputs ({old}, now {digest_of(result)}): rebuilding" in result.stdout
    # an image from before the label (no swarmpool.inputs) is rebuilt too
    assert build_script(tmp_path, "").stdout.splitlines()[-1] == "building"
