"""Catalogue errors name the file and the field; the CLI exits 2 and starts nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from swarmpool.catalogue import CatalogueError, load, parse, without_apps

GOOD = """
[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
command = ["python3", "/app/app.py", "--prefix", "{prefix}"]
deep_link = "hello"
[apps.echo.probe]
path = "healthz"
timeout = "90s"
[apps.echo.pool]
size = 2
max = 4
[apps.echo.session]
idle_timeout = "10m"
disconnect_grace = 30
max_lifetime = "4h"
[apps.echo.limits]
cpus = 0.5
memory = "256m"
"""


def test_good_catalogue_parses_durations_and_sizes() -> None:
    app = parse(GOOD).apps["echo"]
    assert app.name == "echo"
    assert app.probe.timeout == 90
    assert app.session.idle_timeout == 600 and app.session.disconnect_grace == 30
    assert app.session.max_lifetime == 4 * 3600
    assert app.limits.memory == 256 * 1024**2


@pytest.mark.parametrize("change, field, words", [
    (("port = 8888", 'port = "http"'), "apps.echo.port", "Expected `int`"),
    (("port = 8888", "port = 70000"), "apps.echo.port", "<= 65535"),
    (('idle_timeout = "10m"', 'idle_timeout = "ten minutes"'), "apps.echo.session.idle_timeout", "duration"),
    (('memory = "256m"', 'memory = "lots"'), "apps.echo.limits.memory", "memory size"),
    (("max = 4", "max = 1"), "apps.echo.pool.max", "at least size"),
    (("size = 2", "size = -1"), "apps.echo.pool.size", ">= 0"),
    (('image = "swarmpool/echo:latest"', ""), "apps.echo", "missing required field `image`"),
    (("[apps.echo]", "[apps.Echo_App]"), "apps.Echo_App.name", "regex"),
    (('deep_link = "hello"', 'deep_lnk = "hello"'), "apps.echo.deep_lnk", "unknown field"),
    (('deep_link = "hello"', 'deep_link = "/hello"'), "apps.echo.deep_link", "relative"),
    (("cpus = 0.5", "cpus = 0"), "apps.echo.limits.cpus", "> 0"),
    (('path = "healthz"', "path = 3"), "apps.echo.probe.path", "Expected `str | null`"),
    (('timeout = "90s"', "timeout = nan"), "apps.echo.probe.timeout", "finite"),
    (('timeout = "90s"', "timeout = 0"), "apps.echo.probe.timeout", "more than 0"),
    (('timeout = "90s"', 'timeout = "90s"\ninterval = 0'), "apps.echo.probe.interval", "more than 0"),
    (('idle_timeout = "10m"', "idle_timeout = -5"), "apps.echo.session.idle_timeout", "negative"),
    (('max_lifetime = "4h"', "max_lifetime = inf"), "apps.echo.session.max_lifetime", "finite"),
    (('memory = "256m"', 'memory = "0.5"'), "apps.echo.limits.memory", "at least 32m"),
    (('memory = "256m"', 'memory = "16m"'), "apps.echo.limits.memory", "at least 32m"),
    (("[apps.echo]", "[settings]\ntick_interval = 0\n[apps.echo]"), "settings.tick_interval", "more than 0"),
    (("[apps.echo]", "[settings]\norphan_grace = 0\n[apps.echo]"), "settings.orphan_grace", "more than 0"),
    (("[apps.echo]", "[settings]\nclaim_wait = inf\n[apps.echo]"), "settings.claim_wait", "finite"),
    (("[apps.echo]", '[settings]\ntrusted_proxies = ["nginx"]\n[apps.echo]'), "settings.trusted_proxies[0]",
     "address or CIDR"),
    (("[apps.echo]", '[settings]\ntrusted_proxies = ["10.0.0.0/33"]\n[apps.echo]'), "settings.trusted_proxies[0]",
     "address or CIDR"),
    (("[apps.echo]", '[settings]\ntrusted_proxies = "127.0.0.1"\n[apps.echo]'), "settings.trusted_proxies",
     "Expected `array`"),
    *[(('deep_link = "hello"', f'deep_link = "hello"\nframe_ancestors = {value}'), field, words)
      for value, field, words in [
        ('["https://moodle.example.org/course/view.php"]', "apps.echo.frame_ancestors[0]", "no path"),
        ('["https://moodle.example.org?x=1"]', "apps.echo.frame_ancestors[0]", "no path"),
        ('["moodle.example.org"]', "apps.echo.frame_ancestors[0]", "scheme://host[:port]"),
        ('["ftp://moodle.example.org"]', "apps.echo.frame_ancestors[0]", "scheme://host[:port]"),
        ('["https://lms.example.org", "*"]', "apps.echo.frame_ancestors[1]", "any site"),
        ('["https:"]', "apps.echo.frame_ancestors[0]", "any site"),
        ('["https://*"]', "apps.echo.frame_ancestors[0]", "any site"),
        ('["https://lms.*.org"]', "apps.echo.frame_ancestors[0]", "scheme://host[:port]"),
        ('["https://user@lms.example.org"]', "apps.echo.frame_ancestors[0]", "scheme://host[:port]"),
        ('["https://lms.example.org:70000"]', "apps.echo.frame_ancestors[0]", "port from 1 to 65535"),
        ('["self"]', "apps.echo.frame_ancestors[0]", "single quotes"),
        ('[3]', "apps.echo.frame_ancestors[0]", "scheme://host[:port]"),
        ('"https://lms.example.org"', "apps.echo.frame_ancestors", "Expected `array`"),
        ("[\"'none'\", \"https://lms.example.org\"]", "apps.echo.frame_ancestors", "only entry"),
    ]],
    # every address a proxy: any client could forge its address and scheme
    (("[apps.echo]", '[settings]\ntrusted_proxies = ["127.0.0.1", "0.0.0.0/0"]\n[apps.echo]'),
     "settings.trusted_proxies[1]", "every address"),
    (("[apps.echo]", '[settings]\ntrusted_proxies = ["::/0"]\n[apps.echo]'), "settings.trusted_proxies[0]",
     "every address"),
])
def test_each_mistake_names_its_field(change: tuple[str, str], field: str, words: str) -> None:
    text = GOOD.replace(*change)
    assert text != GOOD
    with pytest.raises(CatalogueError) as err:
        parse(text, "classroom.toml")
    assert err.value.field == field
    assert words in err.value.problem
    assert str(err.value).startswith("classroom.toml: ")


def test_not_toml_and_no_apps_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogueError, match="not valid TOML"):
        parse("[apps.echo\n")
    with pytest.raises(CatalogueError, match="no apps"):
        parse("[settings]\n")
    with pytest.raises(CatalogueError, match="cannot read"):
        load(tmp_path / "missing.toml")


def test_shipped_catalogues_are_valid() -> None:
    root = Path(__file__).resolve().parents[2]
    for file in [root / "apps" / "catalogue.toml", *sorted(root.glob("apps/*/catalogue.toml"))]:
        assert load(file).apps, file


@pytest.mark.parametrize("command", ["up", "functions", "gateway", "check"])
def test_cli_exits_2_naming_the_field_before_touching_anything(tmp_path: Path, command: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("port = 8888", "port = -1"))
    args = [sys.executable, "-m", "swarmpool.cli", command, "--catalogue" if command != "check" else "", str(bad)]
    if command in ("functions", "gateway"):
        args += ["--nats-url", "nats://127.0.0.1:1"]  # never contacted: the catalogue fails first
    done = subprocess.run([a for a in args if a], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "bad.toml" in done.stderr and "apps.echo.port" in done.stderr
    assert "Traceback" not in done.stderr


def test_trusted_proxies_are_normalised_and_default_to_loopback() -> None:
    assert parse(GOOD).settings.trusted_proxies == ("127.0.0.0/8", "::1/128")
    text = GOOD.replace("[apps.echo]", '[settings]\ntrusted_proxies = ["10.1.0.9", "::1", "10.2.0.0/16"]\n[apps.echo]')
    assert parse(text).settings.trusted_proxies == ("10.1.0.9/32", "::1/128", "10.2.0.0/16")
    assert parse(GOOD.replace("[apps.echo]", "[settings]\ntrusted_proxies = []\n[apps.echo]")).settings.trusted_proxies == ()


def test_frame_ancestors_are_csp_sources_normalised_and_default_to_none_listed() -> None:
    assert parse(GOOD).apps["echo"].frame_ancestors == ()
    text = GOOD.replace('deep_link = "hello"', 'deep_link = "hello"\nframe_ancestors = ["https://Moodle.Example.org/", '
                        '"https://*.canvas.example.org:*", "http://127.0.0.1:8080", "\'self\'", "https://[::1]:8443"]')
    assert parse(text).apps["echo"].frame_ancestors == (
        "https://moodle.example.org", "https://*.canvas.example.org:*", "http://127.0.0.1:8080", "'self'",
        "https://[::1]:8443")


def test_cli_exits_2_naming_a_bad_frame_ancestor(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('deep_link = "hello"',
                                'deep_link = "hello"\nframe_ancestors = ["https://lms.example.org/course"]'))
    done = subprocess.run([sys.executable, "-m", "swarmpool.cli", "check", str(bad)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "apps.echo.frame_ancestors[0]" in done.stderr and "Traceback" not in done.stderr


def test_static_paths_take_folders_and_file_patterns_but_never_leave_the_prefix() -> None:
    app = parse(GOOD.replace("[apps.echo.probe]", 'static_paths = ["static/", "*.????????.js", "ionicons/*.svg"]\n'
                                                   "[apps.echo.probe]")).apps["echo"]
    assert app.static_paths == ["static/", "*.????????.js", "ionicons/*.svg"]
    for bad in ('"../*.js"', '"/editor.*.js"', '"*/../statefile"', '"a//*.js"', '"edit?id=*"'):
        with pytest.raises(CatalogueError) as err:
            parse(GOOD.replace("[apps.echo.probe]", f"static_paths = [{bad}]\n[apps.echo.probe]"))
        assert err.value.field == "apps.echo.static_paths[0]", bad


def test_without_apps_drops_every_table_of_the_named_apps_only() -> None:
    two = GOOD + GOOD.replace("apps.echo", "apps.pluto-demo").replace('"swarmpool/echo:latest"', '"p:latest"')
    kept = without_apps("[settings]\nmax_instances = 5\n" + two, {"pluto-demo"})
    catalogue = parse(kept)
    assert list(catalogue.apps) == ["echo"] and catalogue.settings.max_instances == 5
    assert parse(kept).apps["echo"] == parse(GOOD).apps["echo"]
    assert "pluto-demo" not in kept
    assert without_apps(two, set()) == two
