"""Invariant 6 as a test: who may import what (docker only in swarm/, NATS only in bus/), and one installed name."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# source folder -> the package it installs as (pyproject.toml [tool.setuptools.package-dir])
FOLDERS = {
    "swarmpool": "swarmpool",
    "bus": "swarmpool.bus",
    "swarm": "swarmpool.swarm",
    "functions": "swarmpool.functions",
    "gateway": "swarmpool.gateway",
}
BARE = ("bus", "swarm", "functions", "gateway")  # installed only as swarmpool.X


def source_files() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def module_package(path: Path) -> str:
    """The installed package a source file belongs to: bus/sub/x.py -> swarmpool.bus.sub."""
    rel = path.relative_to(ROOT)
    return ".".join([FOLDERS[rel.parts[0]], *rel.parts[1:-1]])


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, statement, modules it may load) for every import anywhere in the file, relative ones resolved.

    `from a import b` may load `a` and `a.b`, since b may be a submodule (`from swarmpool import gateway`).
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, f"import {alias.name}", [alias.name]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module_package(path).split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names = [alias.name for alias in node.names]
            shown = f"from {'.' * node.level}{node.module or ''} import {', '.join(names)}"
            yield node.lineno, shown, [module, *(f"{module}.{name}" for name in names if name != "*")]


def imported_modules(path: Path) -> list[str]:
    return [module for _, _, modules in imports(path) for module in modules]


def within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def folder_of(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def nats_allowed(path: Path) -> bool:
    """NATS lives in bus/ and in the front door's own files (swarmpool/*.py, not the mapped folders)."""
    rel = path.relative_to(ROOT)
    return rel.parts[0] == "bus" or (rel.parts[0] == "swarmpool" and len(rel.parts) == 2)


# (what the rule says, does it apply to this file, is this import forbidden there)
RULES = {
    "docker only in swarm/": (lambda p: folder_of(p) != "swarm", lambda m: within(m, "docker")),
    "nats only in bus/ and swarmpool/*.py": (lambda p: not nats_allowed(p), lambda m: within(m, "nats")),
    "no bare bus/swarm/functions/gateway (use swarmpool.X)": (
        lambda p: True, lambda m: any(within(m, bare) for bare in BARE)),
    "swarm/ imports neither swarmpool.bus, swarmpool.functions nor swarmpool.gateway": (
        lambda p: folder_of(p) == "swarm",
        lambda m: any(within(m, f"swarmpool.{x}") for x in ("bus", "functions", "gateway"))),
    "gateway/ imports neither swarmpool.functions nor swarmpool.swarm": (
        lambda p: folder_of(p) == "gateway",
        lambda m: any(within(m, f"swarmpool.{x}") for x in ("functions", "swarm"))),
    "functions/ does not import swarmpool.gateway": (
        lambda p: folder_of(p) == "functions", lambda m: within(m, "swarmpool.gateway")),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_import_boundary(rule: str) -> None:
    applies, forbidden = RULES[rule]
    broken = [
        f"{path.relative_to(ROOT)}:{line}: {statement}"
        for path in source_files() if applies(path)
        for line, statement, modules in imports(path) if any(map(forbidden, modules))
    ]
    assert not broken, f"{rule}, but:\n" + "\n".join(broken)


def test_the_import_scanner_sees_real_imports() -> None:
    """Guard against a vacuous pass: the scanner finds what is known to be there."""
    assert len(source_files()) > 20
    assert any(within(m, "docker") for m in imported_modules(ROOT / "swarm/adapter.py"))
    assert any(within(m, "nats") for m in imported_modules(ROOT / "bus/state.py"))
    assert "swarmpool.bus.subjects" in imported_modules(ROOT / "bus/state.py")


def test_pyproject_installs_only_under_swarmpool() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, package_dir = config["packages"], config.get("package-dir", {})
    assert all(within(p, "swarmpool") for p in packages), f"packages outside swarmpool: {packages}"
    assert set(package_dir) <= set(packages), f"mapped but not listed: {set(package_dir) - set(packages)}"
    for package, folder in package_dir.items():
        assert (ROOT / folder / "__init__.py").is_file(), f"{package} maps to {folder}/, which is no package"
    # the folders this module scans are exactly the ones installed
    assert package_dir == {package: folder for folder, package in FOLDERS.items() if folder != "swarmpool"}


def test_the_built_package_has_one_top_level_name_and_every_module(tmp_path: Path) -> None:
    """Lay the wheel's contents out with setuptools' build_py (what bdist_wheel zips; the `wheel` package,
    needed for a real wheel, is not installed offline) from a copy, so the work tree stays untouched."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    for folder in FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "out"
    subprocess.run([sys.executable, "-c", "from setuptools import setup; setup()", "-q", "build_py",
                    "--build-lib", str(out)], cwd=src, check=True, capture_output=True, timeout=60)
    assert sorted(p.name for p in out.iterdir()) == ["swarmpool"]
    built = {p.relative_to(out) for p in out.rglob("*.py")}
    expected = {Path(*module_package(p).split("."), p.name) for p in source_files()}
    assert not expected - built, f"modules missing from the wheel: {sorted(map(str, expected - built))}"
