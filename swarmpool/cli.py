"""The `swarmpool` command: up (embedded default), functions, gateway, admin."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any

import msgspec

from swarmpool.bus.spec import Catalogue
from swarmpool.catalogue import CatalogueError, load

DEFAULT_STATE_DIR = str(Path.home() / ".local/state/swarmpool")
CREDENTIALS_HELP = ("bus credentials of the {role} role: a `nats` context JSON (user, password, ca, cert, "
                    "key) as `swarmpool up` writes into its state dir, or a NATS .creds file")
EXIT_BAD_INPUT = 2
EXIT_UNAVAILABLE = 1

log = logging.getLogger("swarmpool")


def _catalogue_or_exit(path: str | None) -> Catalogue:
    try:
        return load(path)
    except CatalogueError as err:
        print(f"swarmpool: bad catalogue: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="swarmpool", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, nats_required: bool) -> None:
        sp.add_argument("--catalogue", help="catalogue TOML file (default: the demo catalogue)")
        sp.add_argument("--namespace", default="sp", help="subject prefix and service label (default: sp)")
        sp.add_argument("--nats-url", required=nats_required, help="NATS server URL")

    up = sub.add_parser("up", help="run everything on one machine (embedded nats-server, single-node swarm)")
    common(up, False)
    up.add_argument("--host", default="127.0.0.1", help="gateway address (default: 127.0.0.1)")
    up.add_argument("--port", type=int, default=8000, help="gateway port (default: 8000)")
    up.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                    help="where the embedded nats-server keeps JetStream and the bus credentials "
                         f"(default: {DEFAULT_STATE_DIR})")
    up.add_argument("--no-build", action="store_true", help="fail instead of building missing app images")

    fn = sub.add_parser("functions", help="run the function handlers (a replica of the pool logic)")
    common(fn, True)
    fn.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="functions"))

    gw = sub.add_parser("gateway", help="run the HTTP gateway")
    common(gw, True)
    gw.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="gateway"))
    gw.add_argument("--host", default="127.0.0.1")
    gw.add_argument("--port", type=int, default=8000)

    ad = sub.add_parser("admin", help="operator commands on the bus")
    ad.add_argument("verb", choices=["status", "scale", "pause", "resume", "drain", "retire"])
    ad.add_argument("app", nargs="?")
    ad.add_argument("arg", nargs="?", help="scale: the new pool size; retire: the instance id")
    ad.add_argument("--namespace", default="sp")
    ad.add_argument("--nats-url", help="NATS server URL (default: the credentials' url, else nats://127.0.0.1:4222)")
    ad.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="operator")
                    + "; default: the operator's file in --state-dir, when there")
    ad.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                    help=f"the state dir of `swarmpool up` (default: {DEFAULT_STATE_DIR})")

    check = sub.add_parser("check", help="validate a catalogue file and exit")
    check.add_argument("catalogue", nargs="?")
    return p


def _run(coro: Any) -> Any:
    """Run on uvloop when installed (faster sockets for the proxy), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("docker").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if args.command == "check":
        catalogue = _catalogue_or_exit(args.catalogue)
        print(f"ok: {len(catalogue.apps)} apps: {', '.join(catalogue.apps)}")
        return
    if args.command == "admin":
        raise SystemExit(asyncio.run(_admin(args)))
    catalogue = _catalogue_or_exit(args.catalogue)  # before touching anything
    from swarmpool import launcher

    try:
        if args.command == "up":
            _run(launcher.up(catalogue, args))
        elif args.command == "functions":
            _run(launcher.functions(catalogue, args))
        elif args.command == "gateway":
            _run(launcher.gateway(catalogue, args))
    except launcher.Unavailable as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        raise SystemExit(EXIT_UNAVAILABLE) from None
    except KeyboardInterrupt:
        pass


async def _admin(args: argparse.Namespace) -> int:
    from swarmpool.bus.messages import AdminReply, AdminRequest, ErrorReply
    from swarmpool.bus.roles import Access, credentials_path
    from swarmpool.bus.runtime import connect, encode
    from swarmpool.bus.subjects import Subjects

    request = AdminRequest(app=args.app)
    if args.verb == "scale":
        if args.arg is None or not args.arg.isdigit():
            print("swarmpool: scale needs a size: swarmpool admin scale <app> <size>", file=sys.stderr)
            return EXIT_BAD_INPUT
        request = AdminRequest(app=args.app, size=int(args.arg))
    elif args.verb == "retire":
        request = AdminRequest(app=args.app, id=args.arg)
    found = credentials_path(args.state_dir, "operator")
    path = args.credentials or (found if found.exists() else None)
    try:
        access = Access.load(path) if path else None
    except ValueError as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    url = args.nats_url or (access.url if access and access.url else "nats://127.0.0.1:4222")
    try:
        nc = await connect(url, name="swarmpool-admin", access=access,
                           inbox_prefix=Subjects(args.namespace).inbox("operator"))
    except Exception as err:
        print(f"swarmpool: cannot reach NATS at {url}: {err or type(err).__name__}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        msg = await nc.request(Subjects(args.namespace).admin(args.verb), encode(request), timeout=10)
    except Exception as err:
        print(f"swarmpool: no answer from the functions: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        await nc.close()
    reply = msgspec.json.decode(msg.data, type=AdminReply | ErrorReply)
    if isinstance(reply, ErrorReply):
        print(f"swarmpool: {reply.error}: {reply.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if reply.detail:
        print(reply.detail)
    if reply.apps:
        print(f"{'app':<20} {'target':>6} {'ready':>6} {'start':>6} {'claimed':>7} {'retire':>6} {'failed':>6}")
        for a in reply.apps:
            print(f"{a.app:<20} {a.target:>6} {a.ready:>6} {a.starting:>6} {a.claimed:>7} {a.retiring:>6} "
                  f"{a.failed:>6}{'  paused' if a.paused else ''}")
    return 0


if __name__ == "__main__":
    main()
