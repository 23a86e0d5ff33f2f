"""Guardrails of the catalogue: settings that would let a student's code reach beyond its own instance are
refused (exit 2, naming the field) unless the catalogue declares that trust for exactly those settings.

Refused without trust: root as an app's `user` (by uid or, where the image is present, by name through the
image's /etc/passwd), capabilities outside SAFE_CAPABILITIES in `cap_add`, a `settings.network` other than
the stack's instances overlay (or any network with published ports), and `publish_ports = false` without a
network. Trust is `trusted = ["user", "cap_add"]` in an app, `trusted = ["network", "publish_ports"]` in
[settings]; trusting what is safe anyway is an error too, so a trust never outlives the setting it was for.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from swarmpool.bus.spec import AppSpec, Catalogue, Settings

# Each acts only on the instance's own processes or sockets, never on files or identities: NET_BIND_SERVICE
# (ports below 1024, for apps that listen on 80), KILL (signal its own processes; its pid namespace holds
# nothing else). CHOWN, FOWNER, DAC_OVERRIDE, FSETID, SETUID and SETGID each lead to uid 0 inside (setuid
# binaries still work on this engine: no no-new-privileges), NET_RAW forges packets and ARP on the
# instances' network, and SYS_*, NET_ADMIN, DAC_READ_SEARCH, MKNOD, SETPCAP, SETFCAP, AUDIT_* act on the
# kernel or beyond the container: all of them need trust.
SAFE_CAPABILITIES = ("NET_BIND_SERVICE", "KILL")
INSTANCES_NETWORK = "{namespace}_instances"  # the overlay `swarmpool deploy` makes for a stack's instances
_ANY_INSTANCES_NETWORK = re.compile(r"^[a-z][a-z0-9]{0,10}_instances$")
OWNER_LABEL = "swarmpool.owner"  # swarm/model.py LABEL_OWNER (above the floor), on everything of a namespace
_NUMERIC_ID = re.compile(r"^[+-]?[0-9]+$")  # what the engine reads as a number (Go's strconv.Atoi: "+0", "00")


class Unsafe(Exception):
    """A setting the catalogue may not have: the field (from the file's root) and why."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{problem} at {field}")


@dataclass(frozen=True)
class Finding:
    """One unsafe setting: where it is, which trust allows it, and why it is unsafe."""

    field: str
    trust: str  # "user", "cap_add", "network", "publish_ports"
    problem: str


def capability(name: str) -> str:
    """A capability as Docker names it: upper case, without the CAP_ prefix."""
    name = name.upper()
    return name[4:] if name.startswith("CAP_") else name


def unsafe_capabilities(caps: list[str]) -> list[str]:
    """The capabilities of `caps` outside the safe list (ALL included), in the catalogue's order."""
    return [c for c in caps if capability(c) not in SAFE_CAPABILITIES]


def numeric_id(part: str) -> int | None:
    """The number a uid or gid part stands for ("0", "00", "+0" are all 0), or None when it is a name (any
    non-ASCII digit, such as "²", is a name: the engine would not read it as a number)."""
    part = part.strip()
    return int(part) if part.isascii() and _NUMERIC_ID.match(part) else None


def root_part(part: str) -> bool:
    """Whether a uid part (before any ':group') is root by itself: the name root or any number equal to 0."""
    return part.strip() == "root" or numeric_id(part) == 0


def explicit_root(user: str | None) -> bool:
    """Whether a `user` value names root by itself: uid 0 or the name root (before any ':group')."""
    return user is not None and root_part(user.split(":", 1)[0])


def network_problem(settings: Settings, namespace: str | None) -> str | None:
    """Why `settings.network` lets instances reach beyond the stack's instances overlay; None when it does not."""
    network = settings.network
    if network is None:
        return None
    own = INSTANCES_NETWORK.format(namespace=namespace) if namespace else None
    if (own is not None and network != own) or (own is None and not _ANY_INSTANCES_NETWORK.match(network)):
        wanted = own or INSTANCES_NETWORK.format(namespace="<stack>")
        return (f"network {network!r} is not this stack's instances overlay ({wanted}): instances on it would "
                "reach what else is there (the host, the control plane, other containers)")
    if settings.publish_ports:
        return ("a network with publish_ports = true publishes every instance's port on all of the node's "
                "addresses, outside the filtered instance bridge (set publish_ports = false)")
    return None


def engine_network_problem(network: str, namespace: str | None, found: dict[str, Any] | None) -> str | None:
    """Why the network the engine has under `settings.network`'s name is not the overlay `swarmpool deploy`
    made (internal, labelled with the stack as owner), or None: a bridge an operator made with that name would
    give instances everything, and no packet filter guards instances on a network."""
    owner = namespace or network.rsplit("_", 1)[0]
    if found is None:
        problems = ["does not exist on this engine"]
    else:
        problems = []
        if not found.get("Internal"):
            problems.append("is not internal (its instances would reach this host, the LAN and the internet)")
        if (found.get("Labels") or {}).get(OWNER_LABEL) != owner:
            problems.append(f"is not labelled {OWNER_LABEL}={owner}")
    if not problems:
        return None
    return (f"network {network!r} {' and '.join(problems)}: it is not the instances overlay swarmpool deploy makes "
            f"(swarmpool deploy --stack {owner} makes it; remove the network of that name first)")


async def check_network(settings: Settings, namespace: str | None,
                        inspect: Callable[[str], Awaitable[dict[str, Any] | None]]) -> None:
    """Raise Unsafe when `settings.network` (not trusted: so named as the stack's instances overlay) is not, on
    this engine, that overlay."""
    if settings.network is None or "network" in settings.trusted:
        return
    problem = engine_network_problem(settings.network, namespace, await inspect(settings.network))
    if problem is not None:
        raise Unsafe("settings.network", problem)


def app_findings(app: AppSpec, here: str) -> list[Finding]:
    """The unsafe settings of one app that need no image to be seen."""
    found = []
    if explicit_root(app.user):
        found.append(Finding(f"{here}.user", "user", f"user {app.user!r} is root: instances run students' code"))
    if bad := unsafe_capabilities(app.cap_add):
        found.append(Finding(f"{here}.cap_add", "cap_add",
                             f"{', '.join(bad)} beyond the safe capabilities ({', '.join(SAFE_CAPABILITIES)})"))
    return found


def settings_findings(settings: Settings, namespace: str | None) -> list[Finding]:
    """The unsafe global settings (they apply to every app's instances)."""
    found = []
    if (problem := network_problem(settings, namespace)) is not None:
        found.append(Finding("settings.network", "network", problem))
    elif settings.network is not None and not settings.guard:
        # a reload of a deployed stack's catalogue must keep it: the overlay has no switch between instances
        found.append(Finding("settings.guard", "network",
                             "instances on the stack's overlay without guard = true are not closed in by "
                             "`swarmpool guard` and reach each other (swarmpool deploy sets it; keep it)"))
    if not settings.publish_ports and settings.network is None:
        found.append(Finding("settings.publish_ports", "publish_ports",
                             "publish_ports = false without a network puts instances on Docker's default "
                             "bridge, unfiltered (set network to the stack's "
                             f"{INSTANCES_NETWORK.format(namespace='<stack>')}, as swarmpool deploy does)"))
    return found


def check_trust(findings: list[Finding], trusted: list[str], here: str, undecided: Collection[str] = ()) -> None:
    """Raise Unsafe for the first finding not trusted, or the first trust that no finding needs (a trust in
    `undecided` is left alone: only the image can tell whether it is needed)."""
    declared = set(trusted)
    for finding in findings:
        if finding.trust not in declared:
            raise Unsafe(finding.field, f"{finding.problem}; list {finding.trust!r} in {here}.trusted to allow it")
    needed = {f.trust for f in findings}
    for trust in trusted:
        if trust not in needed and trust not in undecided:
            raise Unsafe(f"{here}.trusted", f"trusts {trust!r}, but its {trust} is safe: remove the trust")


def could_be_root_by_name(user: str | None) -> bool:
    """Whether only the image can tell if `user` is root: a name (not uid) before any ':group'."""
    return user is not None and numeric_id(user.split(":", 1)[0]) is None


def check_catalogue(catalogue: Catalogue, namespace: str | None = None) -> None:
    """Raise Unsafe for the first unsafe setting not trusted (or trust not needed) that the file alone shows;
    `namespace` (the stack) pins the network to its own instances overlay."""
    check_trust(settings_findings(catalogue.settings, namespace), list(catalogue.settings.trusted), "settings")
    for key, app in catalogue.apps.items():
        here = f"apps.{key}"
        maybe = {"user"} if could_be_root_by_name(app.user) or app.user is None else set()
        check_trust(app_findings(app, here), list(app.trusted), here, maybe)


# ---- what the image says: its user database ----


@dataclass(frozen=True)
class ImageAccounts:
    """An image's own user (Config.User) and user database (/etc/passwd and /etc/group, as text)."""

    user: str
    passwd: str
    group: str


def _ids(text: str) -> dict[str, int]:
    """name -> id (the third field) of a passwd or group file; malformed lines are skipped."""
    found: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and (number := numeric_id(parts[2])) is not None:
            found.setdefault(parts[0], number)
    return found


def resolve_uid(user: str, passwd: str) -> int | None:
    """The uid `user` (a name or a uid, before any ':group') stands for in `passwd`; None: no such name."""
    name = user.split(":", 1)[0]
    if (number := numeric_id(name)) is not None:
        return number
    return _ids(passwd).get(name)


def effective_user(app: AppSpec, image_user: str) -> str | None:
    """Who the adapter runs the app as, before resolution: its `user`, else the image's own user, except
    that an image whose user is literally root (or unset) runs as the adapter's unprivileged uid (None)."""
    if app.user:
        return app.user
    if not image_user.strip() or explicit_root(image_user.strip()):
        return None
    return image_user.strip()


def image_findings(app: AppSpec, here: str, accounts: ImageAccounts) -> list[Finding]:
    """Unsafe settings of one app that the image's user database shows (a name that is uid 0)."""
    user = effective_user(app, accounts.user)
    if user is None or explicit_root(user):
        return []  # the adapter substitutes an unprivileged uid, or app_findings already saw root
    uid = resolve_uid(user, accounts.passwd)
    if uid is None:
        raise Unsafe(f"{here}.user", f"the image has no user {user.split(':', 1)[0]!r} in its /etc/passwd")
    if uid == 0:
        whose = f"user {user!r}" if app.user else f"the image's user {user!r}"
        return [Finding(f"{here}.user", "user", f"{whose} is root (uid 0) in {app.image}: instances run "
                                                "students' code")]
    return []


async def check_images(catalogue: Catalogue, accounts: Callable[[str], Awaitable[ImageAccounts | None]]) -> None:
    """Raise Unsafe for an app whose user is root by name in its image, or which trusts `user` while it is not
    root there; apps whose image is not on this node are left to the checks of the file."""
    for key, app in catalogue.apps.items():
        found = await accounts(app.image)
        if found is None:
            continue
        here = f"apps.{key}"
        check_trust(app_findings(app, here) + image_findings(app, here, found), list(app.trusted), here)


def trust_flags(app: AppSpec, settings: Settings) -> list[str]:
    """What `admin status` shows an app is trusted with: its own trusts, then the catalogue's (an app
    option that opens egress, such as internet access, belongs in this list too)."""
    return [*app.trusted, *settings.trusted, *(["egress"] if app.egress == "internet" else [])]


def trust_summary(app: AppSpec, settings: Settings) -> str:
    """One line naming each trusted setting and its value, for warnings and the event log."""
    values = {"user": repr(app.user), "cap_add": ", ".join(unsafe_capabilities(app.cap_add)),
              "network": repr(settings.network), "publish_ports": str(settings.publish_ports).lower(), "egress": app.egress}
    return ", ".join(f"{t} ({values[t]})" for t in trust_flags(app, settings))
