"""How the operator's commands (`admin`, `events`) reach the bus: as the operator role, with its credentials."""

from __future__ import annotations

import argparse
import getpass
import socket
import sys
from typing import Any

from swarmpool.bus.messages import Requester
from swarmpool.bus.roles import Access, credentials_path
from swarmpool.bus.wire import connect
from swarmpool.bus.subjects import Subjects
from swarmpool.exits import EXIT_BAD_INPUT, EXIT_UNAVAILABLE


async def operator_connection(args: argparse.Namespace) -> Any:
    """Connect as the operator role (credentials from --credentials or up's state dir); an int is an exit code."""
    found = credentials_path(args.state_dir, "operator")
    path = args.credentials or (found if found.exists() else None)
    try:
        access = Access.load(path) if path else None
    except ValueError as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    url = args.nats_url or (access.url if access and access.url else "nats://127.0.0.1:4222")
    try:
        return await connect(url, name=f"swarmpool-{args.command}", access=access,
                             inbox_prefix=Subjects(args.namespace).inbox("operator"))
    except Exception as err:
        print(f"swarmpool: cannot reach NATS at {url}: {err or type(err).__name__}", file=sys.stderr)
        return EXIT_UNAVAILABLE


def requester() -> Requester:
    """Who asks, as the event log keeps it: self-reported user and host name, not verified."""
    try:
        user = getpass.getuser()
    except Exception:
        user = ""
    return Requester(user=user, host=socket.gethostname())
