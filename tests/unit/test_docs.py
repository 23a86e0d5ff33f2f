"""The docs stay true where the code can check them: README's size and commands, what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def readme_commands() -> list[str]:
    """The `bash bootstrap.sh ...` commands of README's set-up block."""
    block = re.search(r"```sh\n(bash bootstrap\.sh .*?)```", README.read_text(), re.S)
    assert block, "README has no set-up block of bootstrap.sh commands"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_is_short_and_the_reference_lives_in_docs() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines (at most 250: move reference to docs/)"
    for page in ("catalogue", "operating", "security", "cluster", "architecture", "testing"):
        assert (ROOT / "docs" / f"{page}.md").is_file(), f"docs/{page}.md is missing"
        assert f"(docs/{page}.md)" in README.read_text(), f"README does not link docs/{page}.md"


def test_readme_gives_the_two_commands_and_ci_runs_its_test_command() -> None:
    commands = readme_commands()
    assert commands == ["bash bootstrap.sh up", "bash bootstrap.sh test"], commands
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert "bash bootstrap.sh test" in ci, f".ci/run does not run README's test command: {ci}"


def test_docs_link_only_to_docs_that_exist_or_are_announced() -> None:
    """Relative links between README and docs/ point at files of the checkout (docs written on other
    branches are named in PENDING until they land)."""
    pending = {"docs/pluto.md", "docs/security-gateway.md", "docs/security-instances.md", "docs/security-network.md"}
    broken = []
    for page in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            path = (page.parent / target).resolve()
            rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            if not path.exists() and rel not in pending:
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)
