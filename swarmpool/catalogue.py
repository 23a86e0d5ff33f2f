"""Loading the catalogue file: TOML decoded and validated by msgspec, errors that name the field."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import msgspec

from typing import TypeVar

from swarmpool.bus.spec import AppSpec, Catalogue, Settings, dec_hook

T = TypeVar("T")

_PATH = re.compile(r"at `\$\.(.+)`$")


class CatalogueError(Exception):
    """A catalogue that cannot be used; the message names the file, the field and what was expected."""

    def __init__(self, path: str, field: str, problem: str) -> None:
        self.path, self.field, self.problem = path, field, problem
        where = f" at {field}" if field else ""
        super().__init__(f"{path}: {problem}{where}")


def default_catalogue_path() -> Path:
    """The demo catalogue of the checkout (used when no --catalogue is given)."""
    return Path(__file__).resolve().parent.parent / "apps" / "catalogue.toml"


def _field(message: str) -> tuple[str, str]:
    """Split msgspec's 'Expected `int`, got `str` - at `$.apps.x.port`' into (field, problem)."""
    match = _PATH.search(message)
    if not match:
        return "", message
    problem = message[: match.start()].rstrip(" -")
    return match.group(1), problem


def _convert(raw: object, type_: type[T], here: str, path: str) -> T:
    """msgspec conversion whose error names the full field path from the file's root."""
    try:
        return msgspec.convert(raw, type_, dec_hook=dec_hook)
    except msgspec.ValidationError as err:
        field, problem = _field(str(err))
        if problem.startswith("Object contains unknown field"):
            unknown = problem.split("`")[1]
            field, problem = ".".join(p for p in (field, unknown) if p), "unknown field"
        raise CatalogueError(path, ".".join(p for p in (here, field) if p), problem) from None


def parse(text: str, path: str = "<catalogue>") -> Catalogue:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise CatalogueError(path, "", f"not valid TOML: {err}") from None
    unknown = set(raw) - {"settings", "apps"}
    if unknown:
        raise CatalogueError(path, sorted(unknown)[0], "unknown section (expected [settings] or [apps.<name>])")
    apps_raw = raw.get("apps", {})
    if not isinstance(apps_raw, dict):
        raise CatalogueError(path, "apps", "expected tables [apps.<name>]")
    settings = _convert(raw.get("settings", {}), Settings, "settings", path)
    apps: dict[str, AppSpec] = {}
    for name, app in apps_raw.items():
        if isinstance(app, dict):
            app = {"name": name, **app}
        apps[name] = _convert(app, AppSpec, f"apps.{name}", path)
    catalogue = Catalogue(settings=settings, apps=apps)
    _check(catalogue, path)
    return catalogue


def _check(catalogue: Catalogue, path: str) -> None:
    """Rules across fields that types alone cannot say."""
    if not catalogue.apps:
        raise CatalogueError(path, "apps", "no apps: add at least one [apps.<name>] table")
    for key, app in catalogue.apps.items():
        here = f"apps.{key}"
        if app.name != key:
            raise CatalogueError(path, f"{here}.name", f"name must equal the table key {key!r}")
        _check_app(app, here, path)


def _check_app(app: AppSpec, here: str, path: str) -> None:
    if not app.image.strip():
        raise CatalogueError(path, f"{here}.image", "expected a Docker image name, got an empty string")
    if app.pool.max is not None and app.pool.max < app.pool.size:
        raise CatalogueError(path, f"{here}.pool.max",
                             f"max ({app.pool.max}) must be at least size ({app.pool.size})")
    if app.probe.path is None and not app.probe.log_marker:
        raise CatalogueError(path, f"{here}.probe", "expected a path, a log_marker, or both")
    if app.probe.timeout <= 0:
        raise CatalogueError(path, f"{here}.probe.timeout", "expected a duration above 0")
    if app.deep_link.startswith("/"):
        raise CatalogueError(path, f"{here}.deep_link",
                             "expected a path relative to the instance root (no leading '/')")
    if app.command is not None and not app.command:
        raise CatalogueError(path, f"{here}.command", "expected a non-empty list of strings")


_HEADER = re.compile(r"^\s*\[{1,2}\s*([^\]]+?)\s*\]{1,2}\s*(#.*)?$")


def without_apps(text: str, names: set[str]) -> str:
    """The catalogue text with the tables of the named apps ([apps.<name>] and [apps.<name>.*]) removed."""
    kept: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        header = _HEADER.match(line)
        if header:
            key = [part.strip().strip('"\'') for part in header.group(1).split(".")]
            skipping = len(key) >= 2 and key[0] == "apps" and key[1] in names
        if not skipping:
            kept.append(line)
    return "".join(kept)


def load(path: str | Path | None = None) -> Catalogue:
    """Read and validate a catalogue file (the demo catalogue when `path` is None)."""
    file = Path(path) if path is not None else default_catalogue_path()
    try:
        text = file.read_text()
    except OSError as err:
        raise CatalogueError(str(file), "", f"cannot read the file: {err.strerror}") from None
    return parse(text, str(file))
