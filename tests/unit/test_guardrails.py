"""Catalogue guardrails: unsafe settings exit 2 naming the field unless trusted, exactly; root by name is found
in the image's user database (given here as text: pure decisions, no Docker)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from swarmpool.catalogue import CatalogueError, check_images, parse
from swarmpool.guardrails import trust_flags, trust_summary

APP = """
[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
{app}
[apps.echo.probe]
path = "healthz"
"""


def catalogue(app: str = "", settings: str = "") -> str:
    return f"[settings]\n{settings}\n" + APP.format(app=app)


@pytest.mark.parametrize("app, settings, field, words", [
    # root, by uid or name, with or without a group
    ('user = "0"', "", "apps.echo.user", "is root"),
    ('user = "root"', "", "apps.echo.user", "is root"),
    ('user = "0:0"', "", "apps.echo.user", "'0:0' is root"),
    ('user = "root:1000"', "", "apps.echo.user", "is root"),
    ('user = "00"', "", "apps.echo.user", "'00' is root"),  # the engine reads any number equal to 0 as root
    ('user = "0000:0"', "", "apps.echo.user", "'0000:0' is root"),
    ('user = "+0"', "", "apps.echo.user", "matching regex"),  # a sign is no uid the catalogue takes
    # capabilities beyond the safe list (CAP_ prefix or not), ALL included
    ('cap_add = ["SYS_ADMIN"]', "", "apps.echo.cap_add", "SYS_ADMIN beyond the safe capabilities"),
    ('cap_add = ["NET_BIND_SERVICE", "CAP_DAC_READ_SEARCH"]', "", "apps.echo.cap_add", "CAP_DAC_READ_SEARCH"),
    ('cap_add = ["ALL"]', "", "apps.echo.cap_add", "ALL beyond"),
    ('cap_add = ["CHOWN"]', "", "apps.echo.cap_add", "CHOWN"),
    ('cap_add = ["NET_RAW"]', "", "apps.echo.cap_add", "NET_RAW"),
    # networks other than the stack's instances overlay, or unfiltered tasks
    ("", 'network = "host"\npublish_ports = false', "settings.network", "not this stack's instances overlay"),
    ("", 'network = "bridge"\npublish_ports = false', "settings.network", "'bridge'"),
    ("", 'network = "sp_control"\npublish_ports = false', "settings.network", "'sp_control'"),
    ("", 'network = "sp_instances"', "settings.network", "publish_ports = true publishes"),
    ("", "publish_ports = false", "settings.publish_ports", "default bridge, unfiltered"),
    # the stack's overlay without the guard (a reload that dropped it): instances would reach each other
    ("", 'network = "sp_instances"\npublish_ports = false', "settings.guard", "reach each other"),
    # a trust the catalogue does not need is refused too
    ('user = "1000:1000"\ntrusted = ["user"]', "", "apps.echo.trusted", "trusts 'user', but its user is safe"),
    ('cap_add = ["NET_BIND_SERVICE"]\ntrusted = ["cap_add"]', "", "apps.echo.trusted", "trusts 'cap_add'"),
    ('trusted = ["cap_add"]', "", "apps.echo.trusted", "trusts 'cap_add'"),
    ("", 'trusted = ["network"]', "settings.trusted", "trusts 'network'"),
    ("", 'network = "sp_instances"\npublish_ports = false\nguard = true\ntrusted = ["network"]', "settings.trusted",
     "network"),
    ("", 'trusted = ["publish_ports"]', "settings.trusted", "trusts 'publish_ports'"),
    # trusting one setting does not cover another; unknown trusts are refused by type
    ('user = "0"\ncap_add = ["SYS_ADMIN"]\ntrusted = ["user"]', "", "apps.echo.cap_add", "in apps.echo.trusted"),
    ('trusted = ["everything"]', "", "apps.echo.trusted[0]", "Invalid enum value"),
    ('user = "0"\ntrusted = ["network"]', "", "apps.echo.trusted[0]", "Invalid enum value"),
])
def test_an_unsafe_setting_is_refused_naming_its_field(app: str, settings: str, field: str, words: str) -> None:
    with pytest.raises(CatalogueError) as err:
        parse(catalogue(app, settings), "class.toml")
    assert err.value.field == field
    assert words in err.value.problem
    assert str(err.value).startswith("class.toml: ") and str(err.value).endswith(f" at {field}")


@pytest.mark.parametrize("app, settings, flags", [
    ("", "", []),
    ('user = "1000:1000"\ncap_add = ["NET_BIND_SERVICE", "CAP_KILL"]', "", []),
    ('user = "app"', "", []),  # a name: the image decides (check_images)
    ('user = "0:0"\ntrusted = ["user"]', "", ["user"]),
    ('cap_add = ["SYS_ADMIN", "NET_RAW"]\ntrusted = ["cap_add"]', "", ["cap_add"]),
    ('user = "root"\ncap_add = ["ALL"]\ntrusted = ["cap_add", "user"]', "", ["cap_add", "user"]),
    ('trusted = ["user"]', "", ["user"]),  # no user given: the image's own may be root by name (check_images)
    ("", 'network = "sp_instances"\npublish_ports = false\nguard = true', []),
    ("", 'network = "host"\npublish_ports = false\ntrusted = ["network"]', ["network"]),
    ("", 'network = "sp_instances"\ntrusted = ["network"]', ["network"]),
    ("", 'publish_ports = false\ntrusted = ["publish_ports"]', ["publish_ports"]),
    ('egress = "internet"', "", ["egress"]),  # shown and announced like a trust: the app reaches out
    ('egress = "none"', "", []),
])
def test_a_trusted_or_safe_setting_loads(app: str, settings: str, flags: list[str]) -> None:
    parsed = parse(catalogue(app, settings))
    assert trust_flags(parsed.apps["echo"], parsed.settings) == flags
    assert bool(trust_summary(parsed.apps["echo"], parsed.settings)) == bool(flags)


@pytest.mark.parametrize("namespace, network, ok", [
    ("cls", "cls_instances", True),
    ("cls", "sp_instances", False),  # another stack's overlay
    ("cls", "cls_control", False),  # the stack's control plane
    (None, "sp_instances", True),  # `check` without --namespace: any stack's instances overlay
    (None, "instances", False),
])
def test_the_network_must_be_this_stacks_instances_overlay(namespace: str | None, network: str, ok: bool) -> None:
    text = catalogue("", f'network = "{network}"\npublish_ports = false\nguard = true')
    if ok:
        assert parse(text, namespace=namespace).settings.network == network
    else:
        with pytest.raises(CatalogueError, match="not this stack's instances overlay") as err:
            parse(text, namespace=namespace)
        assert err.value.field == "settings.network"


PASSWD = """root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
toor:x:0:0:another root:/root:/bin/sh
app:x:1000:1000::/home/app:/bin/sh
plus:x:+0:0:uid 0 as Go's Atoi reads it:/:/bin/sh
sup:x:²:0:not a number to the engine:/:/bin/sh
broken line
"""


@pytest.mark.parametrize("app, image_user, field, words", [
    ('user = "toor"', "", "apps.echo.user", "user 'toor' is root (uid 0) in swarmpool/echo:latest"),
    ('user = "toor:app"', "", "apps.echo.user", "is root (uid 0)"),
    ("", "toor", "apps.echo.user", "the image's user 'toor' is root (uid 0)"),
    ('user = "nobody-here"', "", "apps.echo.user", "no user 'nobody-here' in its /etc/passwd"),
    ('user = "app"\ntrusted = ["user"]', "", "apps.echo.trusted", "trusts 'user', but its user is safe"),
    ('trusted = ["user"]', "app", "apps.echo.trusted", "trusts 'user'"),
    ('trusted = ["user"]', "root", "apps.echo.trusted", "trusts 'user'"),  # root images run as uid 10001
    ('trusted = ["user"]', "00", "apps.echo.trusted", "trusts 'user'"),  # so do "00" and "0000:0"
    ('user = "plus"', "", "apps.echo.user", "user 'plus' is root (uid 0)"),
    ('user = "sup"', "", "apps.echo.user", "no user 'sup'"),
    ("", "²", "apps.echo.user", "no user '²'"),  # a name, not a number, for the engine
])
def test_root_by_name_is_found_in_the_images_user_database(app: str, image_user: str, field: str,
                                                           words: str) -> None:
    parsed = parse(catalogue(app))

    async def accounts(image: str) -> tuple[str, str, str]:
        return image_user, PASSWD, "root:x:0:\napp:x:1000:\n"

    with pytest.raises(CatalogueError) as err:
        asyncio.run(check_images(parsed, "class.toml", accounts))
    assert err.value.field == field and words in err.value.problem


@pytest.mark.parametrize("app, image_user", [
    ('user = "app"', ""),
    ('user = "1000"', ""),
    ('user = "12345:12345"', ""),  # a uid the image does not know is fine (Docker runs it)
    ("", "app"),
    ("", "root"),  # the adapter runs it as uid 10001
    ("", "00"),
    ("", "0000:0"),
    ("", ""),
    ('user = "toor"\ntrusted = ["user"]', ""),
    ('trusted = ["user"]', "toor"),
])
def test_a_user_that_is_not_root_in_the_image_or_is_trusted_passes(app: str, image_user: str) -> None:
    parsed = parse(catalogue(app))

    async def accounts(image: str) -> tuple[str, str, str]:
        return image_user, PASSWD, ""

    asyncio.run(check_images(parsed, "class.toml", accounts))


def test_an_image_that_is_not_here_leaves_the_checks_to_the_file() -> None:
    async def absent(image: str) -> None:
        return None

    asyncio.run(check_images(parse(catalogue('user = "toor"\ntrusted = ["user"]')), "c.toml", absent))


def test_check_exits_2_naming_the_field_and_lists_trusted_apps(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad.toml", tmp_path / "good.toml"
    bad.write_text(catalogue('cap_add = ["SYS_ADMIN"]'))
    good.write_text(catalogue('cap_add = ["SYS_ADMIN"]\ntrusted = ["cap_add"]'))
    run = [sys.executable, "-m", "swarmpool.cli", "check"]
    refused = subprocess.run([*run, str(bad)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("list 'cap_add' in apps.echo.trusted to allow it at apps.echo.cap_add")
    accepted = subprocess.run([*run, str(good)], capture_output=True, text=True)
    assert accepted.returncode == 0 and "echo is trusted with cap_add (SYS_ADMIN)" in accepted.stdout
    other_stack = tmp_path / "net.toml"
    other_stack.write_text(catalogue("", 'network = "sp_instances"\npublish_ports = false\nguard = true'))
    assert subprocess.run([*run, str(other_stack)], capture_output=True).returncode == 0
    pinned = subprocess.run([*run, "--namespace", "cls", str(other_stack)], capture_output=True, text=True)
    assert pinned.returncode == 2 and "at settings.network" in pinned.stderr


def test_status_shows_each_apps_trusted_settings() -> None:
    from swarmpool.bus.messages import AppStatus
    from swarmpool.cli import status_table

    def app(name: str, trusted: list[str]) -> AppStatus:
        return AppStatus(app=name, target=1, target_source="catalogue", paused=False, starting=0, ready=1,
                         claimed=0, retiring=0, failed=0, trusted=trusted)

    header, lab, demo = status_table({"lab": app("lab", ["user", "network"]), "demo": app("demo", [])}).splitlines()
    assert header.split()[-4:] == ["trusted", "target", "set", "by"]
    assert lab.split()[-2:] == ["user,network", "catalogue"] and demo.split()[-2:] == ["-", "catalogue"]


@pytest.mark.parametrize("found, words", [
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp"}}, None),  # what swarmpool deploy makes
    (None, "does not exist on this engine"),
    ({"Internal": False, "Labels": {"swarmpool.owner": "sp"}}, "is not internal"),
    ({"Internal": True, "Labels": {}}, "is not labelled swarmpool.owner=sp"),
    ({"Internal": True, "Labels": {"swarmpool.owner": "sp2"}}, "is not labelled swarmpool.owner=sp"),
    ({"Driver": "bridge", "Labels": None}, "is not internal (its instances would reach this host"),  # an operator's
])
def test_the_network_on_the_engine_must_be_the_stacks_internal_overlay(found: dict | None, words: str | None) -> None:
    from swarmpool.catalogue import check_network

    text = catalogue(settings='network = "sp_instances"\npublish_ports = false\nguard = true')

    async def inspect(name: str) -> dict | None:
        assert name == "sp_instances"
        return found

    if words is None:
        asyncio.run(check_network(parse(text, namespace="sp"), "c.toml", "sp", inspect))
        return
    with pytest.raises(CatalogueError) as err:
        asyncio.run(check_network(parse(text, namespace="sp"), "c.toml", "sp", inspect))
    assert err.value.field == "settings.network" and words in err.value.problem
    assert "'sp_instances'" in err.value.problem and "swarmpool deploy --stack sp" in err.value.problem
