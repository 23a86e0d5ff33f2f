"""Loading the catalogue file: TOML decoded and validated by msgspec, errors that name the field."""

from __future__ import annotations

import re
import time
import tomllib
from pathlib import Path

import msgspec

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from swarmpool import guardrails
from swarmpool.bus.spec import AppSpec, CalendarSource, Catalogue, Settings, dec_hook

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


CALENDAR_MAX = 256 * 1024  # bytes of one calendar file: a semester of lectures is a few KiB
CALENDARS_MAX = 384 * 1024  # of all of them: they travel with the catalogue (512 KiB) in one bus message


def parse(text: str, path: str = "<catalogue>", namespace: str | None = None,
          calendars: Mapping[str, str] | None = None) -> Catalogue:
    """A validated catalogue from TOML text; `namespace` (the stack's, where known) pins `settings.network` to
    its instances overlay. CatalogueError names the field of the first mistake or unsafe setting. The calendar
    files the apps name are read next to `path` (`calendars` None: the file being loaded) or taken from
    `calendars` (stored with the catalogue on the bus, or sent with a reload)."""
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
    texts: dict[str, str] = {}
    for name, app in apps_raw.items():
        if isinstance(app, dict):
            app = {"name": name, **app}
        spec = _convert(app, AppSpec, f"apps.{name}", path)
        if spec.calendar:
            spec = _calendars(spec, f"apps.{name}", path, settings, calendars, texts)
        apps[name] = spec
    catalogue = Catalogue(settings=settings, apps=apps, calendars=texts)
    _check(catalogue, path)
    try:
        guardrails.check_catalogue(catalogue, namespace)
    except guardrails.Unsafe as err:
        raise CatalogueError(path, err.field, err.problem) from None
    return catalogue


def _calendars(spec: AppSpec, here: str, path: str, settings: Settings, given: Mapping[str, str] | None,
               texts: dict[str, str]) -> AppSpec:
    """The app with each calendar `file`'s text in its `ics` (kept in `texts` by name, to be stored with the
    catalogue), every calendar parsed and its weeks around now expanded: CatalogueError names the file."""
    from swarmpool.functions.schedule import CalendarError, check_calendar

    sources: list[CalendarSource] = []
    for i, source in enumerate(spec.calendar):
        at = f"{here}.calendar[{i}]"
        if (source.file is None) == (source.ics is None):
            raise CatalogueError(path, at, "expected either file (an .ics file next to the catalogue) or ics "
                                           "(the calendar's text), not both or neither")
        name = source.file
        if name is not None:
            if not name.strip():
                raise CatalogueError(path, f"{at}.file", "expected the path of an .ics file, got an empty string")
            if name not in texts:
                texts[name] = _calendar_text(name, path, given, f"{at}.file")
                if sum(len(t) for t in texts.values()) > CALENDARS_MAX:
                    raise CatalogueError(path, f"{at}.file", f"{name}: the calendars together exceed "
                                                             f"{CALENDARS_MAX // 1024} KiB")
            source = msgspec.structs.replace(source, ics=texts[name])
        try:
            check_calendar(source, settings.timezone, time.time())
        except CalendarError as err:
            raise CatalogueError(path, f"{at}.file" if name else f"{at}.ics", f"{name or 'calendar'}: {err}") from None
        sources.append(source)
    return msgspec.structs.replace(spec, calendar=sources)


def _calendar_text(name: str, path: str, given: Mapping[str, str] | None, field: str) -> str:
    """A calendar file's text: from `given` (stored, sent) or read next to the catalogue file `path`."""
    if given is not None:
        if name not in given:
            raise CatalogueError(path, field, f"{name}: the calendar file was not stored with the catalogue "
                                              "(reload it from a file with `swarmpool admin reload`)")
        text = given[name]
    else:
        file = Path(path).parent / name
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CatalogueError(path, field, f"{name}: cannot read the calendar file: {err.strerror}") from None
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise CatalogueError(path, field, f"{name}: not an iCalendar file (expected UTF-8 text)") from None
    if len(text.encode()) > CALENDAR_MAX:
        raise CatalogueError(path, field, f"{name}: more than {CALENDAR_MAX // 1024} KiB")
    return text


async def check_images(catalogue: Catalogue, path: str,
                       accounts: Callable[[str], Awaitable[tuple[str, str, str] | None]]) -> None:
    """The guardrails that need each app's image (where it is on this node; `accounts` is the swarm port's
    `image_accounts`): CatalogueError as `parse`'s."""
    async def read(image: str) -> guardrails.ImageAccounts | None:
        found = await accounts(image)
        return None if found is None else guardrails.ImageAccounts(*found)

    try:
        await guardrails.check_images(catalogue, read)
    except guardrails.Unsafe as err:
        raise CatalogueError(path, err.field, err.problem) from None


async def check_network(catalogue: Catalogue, path: str, namespace: str | None,
                        inspect: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
    """The guardrail that needs the engine: `settings.network` is the stack's internal overlay, labelled as
    ours (`inspect` is the swarm port's `network_info`): CatalogueError as `parse`'s."""
    try:
        await guardrails.check_network(catalogue.settings, namespace, inspect)
    except guardrails.Unsafe as err:
        raise CatalogueError(path, err.field, err.problem) from None


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
    if "'none'" in app.frame_ancestors and len(app.frame_ancestors) > 1:
        raise CatalogueError(path, f"{here}.frame_ancestors",
                             "\"'none'\" must be the only entry (no site may frame the app)")
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


def load(path: str | Path | None = None, namespace: str | None = None) -> Catalogue:
    """Read and validate a catalogue file (the demo catalogue when `path` is None)."""
    file = Path(path) if path is not None else default_catalogue_path()
    try:
        text = file.read_text()
    except OSError as err:
        raise CatalogueError(str(file), "", f"cannot read the file: {err.strerror}") from None
    return parse(text, str(file), namespace)


# What `admin reload` cannot change on running hosts: these are read once when a host or gateway starts.
# Every other field takes effect on reload (new instances, the next click, tick or request). `admin reload`
# names the ones a new catalogue changes; tests/unit/test_docs.py checks docs/operating.md lists these.
RESTART_ONLY: dict[str, str] = {
    "settings.heartbeat_interval": "the gateway's activity tracker is built at its start",
    "settings.instance_domain": "the gateway's origin guard is built at its start (its launch redirects already "
                                "use the new domain: restart the gateways at once)",
    "settings.static_cache_size": "the gateway's static cache is sized when first used",
    "settings.static_cache_variants": "the gateway's static cache is sized when first used",
    "settings.keepalive_timeout": "the gateway's listener is made at its start",
    "settings.upstream_read_timeout": "the gateway's client to instances is made at its start",
    "settings.publish_ports": "the instance bridge and packet filter of `up` are set up at its start",
}


def restart_only_changes(old: Catalogue, new: Catalogue) -> list[str]:
    """The restart-only fields (RESTART_ONLY) whose value `new` changes, as "settings.x" or "apps.<name>.pool.y"."""
    changed = [key for key in RESTART_ONLY if key.startswith("settings.")
               and getattr(old.settings, key.split(".", 1)[1]) != getattr(new.settings, key.split(".", 1)[1])]
    for key in RESTART_ONLY:
        if key.startswith("apps.*."):
            section, field = key.split(".")[2:]
            changed += [f"apps.{name}.{section}.{field}" for name in sorted(set(old.apps) & set(new.apps))
                        if getattr(getattr(old.apps[name], section), field)
                        != getattr(getattr(new.apps[name], section), field)]
    return changed
