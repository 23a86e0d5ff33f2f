"""The docs stay true where the code can check them: README's size and commands, what CI runs, the catalogue
reference against bus/spec.py and the admin verbs against bus/verbs.py."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec.inspect as mi

from swarmpool.bus.spec import Catalogue
from swarmpool.bus.verbs import VERBS

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


# ---- the catalogue reference (docs/catalogue.md) against bus/spec.py ----

_HEADING = re.compile(r"^### `(\[\[?[a-z_.<>]+\]\]?)`\s*$")
_ROW = re.compile(r"^\| `([a-z_]+)` \|")


def _unwrap(t: mi.Type) -> tuple[mi.StructType | None, bool]:
    """The Struct a field's type holds (through optional, dict values and lists), and whether it is a list."""
    if isinstance(t, mi.Metadata):
        return _unwrap(t.type)
    if isinstance(t, mi.StructType):
        return t, False
    if isinstance(t, mi.UnionType):
        for member in t.types:
            struct, many = _unwrap(member)
            if struct is not None:
                return struct, many
    if isinstance(t, mi.ListType):
        return _unwrap(t.item_type)[0], True
    if isinstance(t, mi.DictType):
        return _unwrap(t.value_type)
    return None, False


def spec_tables() -> dict[str, set[str]]:
    """Every table of the catalogue (`[settings]`, `[apps.<name>.probe]`, `[[apps.<name>.schedule]]`) -> its
    plain fields, walked from the Catalogue Struct of bus/spec.py (a field that holds a Struct is a table)."""
    tables: dict[str, set[str]] = {}

    def walk(struct: mi.StructType, path: str, many: bool) -> None:
        if path:
            tables[f"[[{path}]]" if many else f"[{path}]"] = set()
        for field in struct.fields:
            inner, inner_many = _unwrap(field.type)
            here = ".".join(p for p in (path, field.name) if p)
            if isinstance(field.type, mi.DictType) and inner is not None:
                here += ".<name>"
            if inner is not None:
                walk(inner, here, inner_many)
            elif path:
                tables[f"[[{path}]]" if many else f"[{path}]"].add(field.name)

    root = mi.type_info(Catalogue)
    assert isinstance(root, mi.StructType)
    walk(root, "", False)
    return tables


def documented_tables() -> dict[str, set[str]]:
    """The reference section of docs/catalogue.md: each `### [table]` heading -> the fields of its table."""
    text = (ROOT / "docs/catalogue.md").read_text()
    assert "## Reference" in text, "docs/catalogue.md has no Reference section"
    tables: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in text.split("## Reference", 1)[1].splitlines():
        if heading := _HEADING.match(line):
            current = tables.setdefault(heading.group(1), set())
        elif current is not None and (row := _ROW.match(line)):
            current.add(row.group(1))
    return tables


def test_the_walk_of_the_spec_sees_every_table() -> None:
    """Guard against a vacuous pass: the walk finds what is known to be there."""
    tables = spec_tables()
    assert {"[settings]", "[apps.<name>]", "[apps.<name>.probe]", "[[apps.<name>.schedule]]"} <= set(tables)
    assert "max_instances" in tables["[settings]"] and "image" in tables["[apps.<name>]"]
    assert "probe" not in tables["[apps.<name>]"]  # a table of its own, not a plain field


def test_every_catalogue_field_is_documented_and_no_documented_field_is_gone() -> None:
    spec, docs = spec_tables(), documented_tables()
    problems = [f"table {t} of bus/spec.py has no '### `{t}`' section" for t in sorted(set(spec) - set(docs))]
    problems += [f"docs/catalogue.md documents table {t}, which bus/spec.py does not have" for t in sorted(set(docs) - set(spec))]
    for table in sorted(set(spec) & set(docs)):
        problems += [f"{table} {f}: in bus/spec.py, not documented" for f in sorted(spec[table] - docs[table])]
        problems += [f"{table} {f}: documented, not in bus/spec.py" for f in sorted(docs[table] - spec[table])]
    assert not problems, "docs/catalogue.md and bus/spec.py disagree:\n" + "\n".join(problems)


# ---- the admin verbs (docs/operating.md) against the one verb table, bus/verbs.py ----

_VERB_ROW = re.compile(r"^\| `([a-z]+)[^`]*` \| ([^|]+) \|")


def documented_verbs() -> dict[str, str]:
    """The verb table of docs/operating.md: verb -> where the dashboard offers it (per_app, page or none)."""
    text = (ROOT / "docs/operating.md").read_text()
    table = text.split("| verb | on the dashboard |", 1)
    assert len(table) == 2, "docs/operating.md has no verb table (| verb | on the dashboard | what it does |)"
    verbs: dict[str, str] = {}
    for line in table[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        row = _VERB_ROW.match(line)
        assert row, f"not a verb row: {line}"
        shown = row.group(2).strip()
        verbs[row.group(1)] = "per_app" if shown == "per app" else "page" if shown.startswith("once") else "none"
    return verbs


def test_operating_lists_exactly_the_verbs_of_the_table_and_where_the_dashboard_offers_them() -> None:
    documented = documented_verbs()
    assert set(documented) == set(VERBS), (f"docs/operating.md lists {sorted(documented)}, bus/verbs.py has "
                                           f"{sorted(VERBS)}")
    assert documented == {name: verb.dashboard for name, verb in VERBS.items()}


def test_every_verb_of_the_table_has_a_handler_and_the_cli_offers_exactly_the_table() -> None:
    from swarmpool.cli import _parser
    from swarmpool.functions.admin import RUN

    assert set(RUN) == set(VERBS)
    admin = next(a for a in _parser()._subparsers._group_actions[0].choices.items() if a[0] == "admin")[1]  # type: ignore[union-attr]
    verbs = admin._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(verbs) == set(VERBS)


def test_operating_lists_exactly_the_restart_only_settings() -> None:
    from swarmpool.catalogue import RESTART_ONLY

    text = (ROOT / "docs/operating.md").read_text()
    table = text.split("| restart-only | why |", 1)
    assert len(table) == 2, "docs/operating.md has no restart-only table"
    rows = [line for line in table[1].splitlines()[2:] if line.startswith("|")]
    documented = {re.match(r"^\| `([^`]+)` \|", row).group(1) for row in rows}  # type: ignore[union-attr]
    assert documented == set(RESTART_ONLY)


def test_just_test_leaves_out_exactly_the_slow_lanes_and_ci_runs_them_all() -> None:
    """Slow lanes are the markers pyproject.toml declares as such: `just test` (the fast lane) deselects each,
    each has its own recipe, and CI runs README's test command with no marker filter (every lane)."""
    import tomllib

    markers = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]
    slow = {m.split(":")[0] for m in markers if "slow lane" in m}
    assert {"cluster", "faults", "bench_smoke"} <= slow, slow
    justfile = (ROOT / "justfile").read_text()
    fast = re.search(r"^test \*ARGS:\n\s+(.*)$", justfile, re.M)
    assert fast, "no `test` recipe in the justfile"
    assert set(re.findall(r"not (\w+)", fast.group(1))) == slow, fast.group(1)
    for marker in slow:
        assert re.search(rf"^\s+python -m pytest -m {marker} ", justfile, re.M), f"no recipe runs the {marker} lane"
    ci = (ROOT / ".ci/run").read_text()
    assert "bash bootstrap.sh test\n" in ci and " -m " not in ci
