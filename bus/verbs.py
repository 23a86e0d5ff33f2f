"""The operators' verbs, one table: the admin service's endpoints (``sp.admin.<verb>``), the CLI's
``swarmpool admin`` arguments and the dashboard's buttons are all built from ``VERBS``.

Each verb has a tagged request Struct (bus/messages.py); what runs it lives in functions/admin.py.
Adding a verb is one entry here and its handler there (a test checks both tables name the same verbs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec

from swarmpool.bus.messages import (AdminCommand, DrainRequest, LinkRequest, LinksRequest, PauseRequest,
                                    ReloadRequest, ResumeRequest, RetireRequest, RevokeRequest, RotateRequest,
                                    ScaleRequest, StatusRequest)
from swarmpool.bus.spec import parse_duration


@dataclass(frozen=True)
class Arg:
    """How an operator gives one field of a verb's request: argparse flags and options, a converter, and the
    dashboard's input for it (None: the dashboard does not ask for this field)."""

    field: str
    flags: tuple[str, ...]
    help: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    convert: Callable[[Any], Any] | None = None
    form_input: str | None = None  # HTML attributes of the dashboard's <input name=field ...>


@dataclass(frozen=True)
class Verb:
    """One operator verb: its request Struct, how the CLI and the dashboard ask for it, whether it is logged."""

    name: str
    request: type[AdminCommand]
    help: str
    args: tuple[Arg, ...] = ()
    changes: bool = True  # kept in the event log
    # the dashboard's button: one per app row, one for the page (reload of the file it was given), or none
    dashboard: Literal["per_app", "page", "none"] = "none"
    # its answer carries a launch path (a new lecture link): the CLI prints it behind --gateway
    prints_link: bool = False


APP = Arg("app", ("app",), "the app (a name from the catalogue)")
APP_OR_ALL = (Arg("app", ("app",), "the app (or --all)", {"nargs": "?"}),
              Arg("all", ("--all",), "every app in the catalogue", {"action": "store_true"}))

VERBS: dict[str, Verb] = {v.name: v for v in (
    Verb("status", StatusRequest, "where each pool stands: target (and the rule that set it), "
         "ready, starting, claimed, retiring, failed", (Arg("app", ("app",), "one app only", {"nargs": "?"}),),
         changes=False),
    Verb("scale", ScaleRequest, "keep N ready instances of an app, overriding the catalogue and "
         "its schedule (until changed, or for a while with --for)",
         (APP, Arg("size", ("size",), "ready instances to keep", {"type": int, "metavar": "N"},
                   form_input='type="number" min="0" max="10000" required'),
          Arg("for_seconds", ("--for",), "only this long, e.g. 90m or 2h (then the catalogue's rules again)",
              {"metavar": "DURATION"}, convert=lambda text: float(parse_duration(text)))),
         dashboard="per_app"),
    Verb("pause", PauseRequest, "refuse new claims (the warm pool stays)", APP_OR_ALL, dashboard="per_app"),
    Verb("resume", ResumeRequest, "accept claims again and refill the pool", APP_OR_ALL, dashboard="per_app"),
    Verb("drain", DrainRequest, "pause and retire the warm pool; running sessions go on", APP_OR_ALL,
         dashboard="per_app"),
    Verb("reload", ReloadRequest, "load a new catalogue file on every host: new apps warm up, removed "
         "ones drain, changed ones are recycled gradually (claimed instances are never touched)",
         (Arg("text", ("catalogue",), "the catalogue file (read and checked here, as at start)",
              {"metavar": "FILE"}),), dashboard="page"),
    Verb("retire", RetireRequest, "retire one instance by its id or its short prefix",
         (Arg("id", ("id",), "the instance id, or its first 4+ characters", {"metavar": "ID_PREFIX"}),
          Arg("app", ("--app",), "look in this app only"))),
    Verb("link", LinkRequest, "make a lecture link for an app (for apps with require_link): a signed URL "
         "valid for a while, with an optional claim budget counted on the bus",
         (APP, Arg("for_seconds", ("--for",), "how long it is valid, e.g. 2h or 90m", {"metavar": "DURATION",
                                                                                      "required": True},
                   convert=lambda text: float(parse_duration(text)),
                   form_input='placeholder="valid for, e.g. 2h" size="10" required'),
          Arg("max", ("--max",), "at most this many claims (sessions started) with it, all gateways together",
              {"type": int, "metavar": "N"}, form_input='type="number" min="1" placeholder="max claims"'),
          Arg("label", ("--label",), "a name for it (the lecture), shown by `links`", {"metavar": "LABEL"},
              form_input='placeholder="label" maxlength="80"')),
         dashboard="per_app", prints_link=True),
    Verb("links", LinksRequest, "list the lecture links: claims made, budget, expiry, state (never their URLs)",
         (Arg("app", ("app",), "one app only", {"nargs": "?"}),), changes=False),
    Verb("revoke", RevokeRequest, "revoke a lecture link by its id or its short prefix: it claims nothing more",
         (Arg("id", ("id",), "the link id, or its first 4+ characters", {"metavar": "LINK_ID"}),)),
    Verb("rotate", RotateRequest, "add a new link signing key (new links use it; older links stay valid, "
         "unless --retire)",
         (Arg("retire", ("--retire",), "also retire the older keys: every link signed with them stops working",
              {"action": "store_true"}),)),
)}


def request_from(verb: Verb, values: Mapping[str, Any]) -> AdminCommand:
    """The verb's request from what the operator gave (CLI arguments or form fields, by field name), validated as
    the service will. ValueError names what is wrong; for reload, the file is read and checked by the loader every
    host starts with (a swarmpool.catalogue.CatalogueError names the field)."""
    fields: dict[str, Any]
    if verb.request is ReloadRequest:
        from swarmpool.catalogue import load

        path = Path(str(values["text"]))
        loaded = load(path, values.get("namespace"))  # settings.network is checked against the stack's own
        # the calendar files it names go with it: every host stores and runs the same
        fields = {"text": path.read_text(), "source": str(path.resolve()), "calendars": loaded.calendars}
    else:
        fields = {}
        for arg in verb.args:
            value = values.get(arg.field)
            if value is None or value is False or value == "":
                continue
            try:
                fields[arg.field] = arg.convert(value) if arg.convert else value
            except ValueError as err:
                raise ValueError(f"{verb.name}: {arg.field}: {err}") from None
    try:
        return msgspec.convert(fields, verb.request, strict=False)  # a form's "5" is the int 5
    except msgspec.ValidationError as err:
        raise ValueError(f"{verb.name}: {err}") from None
