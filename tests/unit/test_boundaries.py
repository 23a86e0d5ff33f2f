"""Invariant 6 as a test (docs/architecture.md): who may import what (docker only in swarm/, NATS only in bus/),
one installed name, no import cycles (lazy imports included), the floor below everything and the front door on top."""

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


# what of swarm/ the functions see: the port, and values that import nothing of docker (nor does swarm/__init__.py)
SWARM_VALUES = {"swarmpool.swarm.port", "swarmpool.swarm.model", "swarmpool.swarm.names", "swarmpool.swarm.tasks"}


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
    "bus/ and functions/ reach swarm/ only through its port and docker-free values": (
        lambda p: folder_of(p) in ("bus", "functions"),
        lambda m: within(m, "swarmpool.swarm") and m != "swarmpool.swarm"
        and not any(within(m, v) for v in SWARM_VALUES)),
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
    assert any(within(m, "docker") for m in imported_modules(ROOT / "swarm/engine.py"))
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


# ---- no import cycles among our modules, lazy (function-level) imports included ----


def module_name(path: Path) -> str:
    """The installed module of a source file: bus/state.py -> swarmpool.bus.state, bus/__init__.py -> swarmpool.bus."""
    package = module_package(path)
    return package if path.name == "__init__.py" else f"{package}.{path.stem}"


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports anywhere in its file (at the top or inside a function).

    `from pkg import sub` names the submodule `pkg.sub` when there is one (Python loads the package `pkg` first
    either way: a parent is never counted as an edge, or every submodule would cycle with its package)."""
    files = {module_name(p): p for p in source_files()}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges: set[str] = set()
        for _, statement, modules in imports(path):
            if statement.startswith("from ") and len(modules) > 1:  # `from a import b, c`: a.b if a module, else a
                ours = {sub if sub in files else modules[0] for sub in modules[1:]}
            else:
                ours = set(modules)
            edges.update(m for m in ours if m in files and m != name)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each module that lies on any (each cycle listed once, smallest name first)."""
    found: set[tuple[str, ...]] = set()
    for start in sorted(graph):
        paths: dict[str, list[str]] = {start: [start]}
        frontier = [start]
        while frontier and start not in [m for f in frontier for m in graph[f]]:
            nxt = []
            for module in frontier:
                for dep in sorted(graph[module]):
                    if dep not in paths:
                        paths[dep] = paths[module] + [dep]
                        nxt.append(dep)
            frontier = nxt
        closing = [f for f in frontier if start in graph[f]]
        if closing:
            loop = paths[min(closing, key=lambda f: len(paths[f]))]
            i = loop.index(min(loop))
            found.add(tuple(loop[i:] + loop[:i]))
    return [list(c) for c in sorted(found)]


def test_no_import_cycles_lazy_imports_included() -> None:
    loops = cycles(import_graph())
    assert not loops, "import cycles (a lazy import inside a function counts: it only hides the cycle):\n" + "\n".join(
        " -> ".join([*loop, loop[0]]) for loop in loops)


def test_the_cycle_finder_finds_a_lazy_cycle() -> None:
    """Guard against a vacuous pass: known shapes, and the graph sees lazy imports."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    graph = import_graph()
    assert "swarmpool.launcher" in graph["swarmpool.cli"]  # imported inside main() only
    assert "swarmpool.gateway.pages" in graph["swarmpool.gateway.launch"]  # `from swarmpool.gateway import pages`
    assert "swarmpool.gateway" not in graph["swarmpool.gateway.launch"]
    assert "swarmpool.gateway.app" in graph["swarmpool.gateway"]  # `from swarmpool.gateway.app import make_app`


# ---- floors: a base that imports nothing above it, the front door on top ----

# the floor: what every part may import; each imports nothing of ours but the floor
# functions.schedule: the pure time arithmetic of schedules and lecture calendars (imports only the spec)
FLOOR = {"swarmpool.ids", "swarmpool.exits", "swarmpool.bus.spec", "swarmpool.catalogue", "swarmpool.guardrails",
         "swarmpool.functions.schedule", "swarmpool.files"}
# the front door's own modules: nothing below the top imports them
FRONT_DOOR = {"swarmpool.cli", "swarmpool.launcher", "swarmpool.deploy", "swarmpool.host", "swarmpool.events",
              "swarmpool.natsd", "swarmpool.operator"}


def test_the_floor_imports_only_the_floor() -> None:
    graph = import_graph()
    assert FLOOR <= set(graph) and FRONT_DOOR <= set(graph), "a module named here no longer exists"
    broken = {m: sorted(graph[m] - FLOOR) for m in sorted(FLOOR) if graph[m] - FLOOR}
    assert not broken, f"floor modules import above the floor: {broken}"


def test_nothing_below_the_front_door_imports_it() -> None:
    graph = import_graph()
    below = [m for m in graph if m.split(".")[1:2] and m.split(".")[1] in BARE]  # bus/, swarm/, functions/, gateway/
    broken = {m: sorted(graph[m] & FRONT_DOOR) for m in sorted(below) if graph[m] & FRONT_DOOR}
    assert not broken, f"bus/, swarm/, functions/, gateway/ import the front door: {broken}"


# ---- swarm/: one facade over concern modules, values at the bottom ----

# each module of swarm/ imports only modules of swarm/ in layers below its own (swarm/__init__.py imports nothing)
SWARM_LAYERS = [
    {"model", "tasks"},  # labels, errors, value types, task states: nothing of docker, nothing of ours
    {"names", "port"},  # what we name on the engine; the port the functions see
    # docker-py's gaps, the client and its threads, the probe; beside the adapter: packet filter, guard
    {"raw_api", "engine", "probe", "firewall", "guard"},
    {"images", "networks", "lease", "events", "stack"},  # concerns, each on the engine's connection
    {"services", "status"},  # instance services (images, bridges); task status (a task's error marks a bridge dead)
    {"adapter"},  # Swarm, the facade composing them
]


def test_swarm_modules_stand_on_the_layers_below() -> None:
    """Values at the bottom, the engine above them, the concerns on the engine, the facade on top."""
    graph = import_graph()
    layer = {f"swarmpool.swarm.{name}": i for i, names in enumerate(SWARM_LAYERS) for name in names}
    modules = {module_name(p) for p in (ROOT / "swarm").glob("*.py")} - {"swarmpool.swarm"}
    assert modules == set(layer), f"place every module of swarm/ in SWARM_LAYERS: {sorted(modules ^ set(layer))}"
    assert not graph["swarmpool.swarm"], "swarm/__init__.py imports a module (so docker-free ones would load docker)"
    broken = {m: up for m in sorted(layer)
              if (up := sorted(d for d in graph[m] if within(d, "swarmpool.swarm") and layer[d] >= layer[m]))}
    assert not broken, f"swarm/ modules import their own layer or above: {broken}"


def test_the_swarm_values_import_nothing_of_docker_or_ours() -> None:
    """model.py and tasks.py import only the standard library and msgspec; names.py and port.py those and them."""
    base = set(sys.stdlib_module_names) | {"msgspec"}
    for name, ours in (("model", ()), ("tasks", ()), ("names", ("model",)), ("port", ("model",))):
        foreign = [m for m in imported_modules(ROOT / "swarm" / f"{name}.py") if m.split(".")[0] not in base
                   and not any(within(m, f"swarmpool.swarm.{o}") for o in ours)]
        assert not foreign, f"swarm/{name}.py imports {foreign}"


def test_function_hosts_load_no_docker() -> None:
    """Importing every module of bus/, functions/ and gateway/ leaves docker (and the Swarm adapter) unloaded."""
    code = ("import importlib, pkgutil, sys\n"
            "import swarmpool.bus, swarmpool.functions, swarmpool.gateway\n"
            "for pkg in (swarmpool.bus, swarmpool.functions, swarmpool.gateway):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'docker' or m == 'swarmpool.swarm.adapter'))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True, timeout=60)
    loaded = ast.literal_eval(out.stdout.strip())
    assert not loaded, f"the function hosts' modules load {len(loaded)} modules of docker or the adapter: {loaded[:4]}"


def docker_private_names() -> set[str]:
    """The underscore attributes of docker-py's clients (its private API: `api._post_json`, `api._url`, ...)."""
    import docker

    return {a for cls in (docker.APIClient, docker.DockerClient) for a in dir(cls)
            if a.startswith("_") and not a.startswith("__")}


def private_docker_uses(path: Path, private: set[str]) -> list[int]:
    """Lines where an object other than `self` is asked for one of docker-py's private attributes."""
    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in private
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


def test_docker_private_api_is_used_in_one_place() -> None:
    """swarm/raw_api.py holds the calls docker-py has no public method for; nothing else reaches its privates."""
    private = docker_private_names()
    assert {"_url", "_post_json", "_result"} <= private
    files = [*source_files(), *sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
    broken = [f"{path.relative_to(ROOT)}:{line}" for path in files if path != ROOT / "swarm/raw_api.py"
              for line in private_docker_uses(path, private)]
    assert not broken, "docker-py's private API outside swarm/raw_api.py:\n" + "\n".join(broken)
    assert private_docker_uses(ROOT / "swarm/raw_api.py", private), "the scanner no longer sees raw_api's calls"


# ---- handlers see ports, never the wire ----

RAW_CLIENT = {"nc", "client"}  # the raw NATS client, by the names the code gives it (Context.bus.client)


def test_functions_never_reach_the_raw_nats_client() -> None:
    """Handlers publish, lock and read through the Context's ports; subscribing is the runtime's (bus/)."""
    broken = [f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr}"
              for path in sorted((ROOT / "functions").rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Attribute) and node.attr in RAW_CLIENT]
    assert not broken, "functions/ reaches the raw NATS client:\n" + "\n".join(broken)


def test_the_wire_is_below_the_runtime() -> None:
    """bus/wire.py (connection, encoding, log redaction, the drop hook) imports no other module of bus/ but the
    spec, the roles and the subjects; the runtime and the callers' facade stand on it."""
    graph = import_graph()
    assert graph["swarmpool.bus.wire"] <= FLOOR | {"swarmpool.bus.roles", "swarmpool.bus.subjects"}, graph["swarmpool.bus.wire"]
    assert "swarmpool.bus.wire" in graph["swarmpool.bus.runtime"] and "swarmpool.bus.wire" in graph["swarmpool.bus.client"]


# ---- one home per idea ----

TASK_STATES = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove", "missing"}
TASK_STATES_HOME = {"swarm/tasks.py", "tests/unit/test_boundaries.py"}


def task_state_lists(path: Path) -> list[int]:
    """Lines of literal collections of Docker task states (two or more, a state only a task has among them)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Set, ast.Tuple, ast.List)) and len(node.elts) >= 2:
            words = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if len(words) == len(node.elts) and set(words) <= TASK_STATES and set(words) - {"failed", "missing"}:
                found.append(node.lineno)
    return found


def test_the_ended_task_states_are_listed_once() -> None:
    """swarm/tasks.py holds the states a task never leaves; everyone else (functions, tests) imports them."""
    files = [*source_files(), *sorted((ROOT / "tests").rglob("*.py"))]
    broken = [f"{rel}:{line}" for path in files if (rel := str(path.relative_to(ROOT))) not in TASK_STATES_HOME
              for line in task_state_lists(path)]
    assert not broken, "task states listed again (import ENDED_TASK_STATES from swarm/tasks.py):\n" + "\n".join(broken)
    assert task_state_lists(ROOT / "swarm/tasks.py"), "the scanner no longer sees the one list"
