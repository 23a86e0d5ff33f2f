"""The `swarmpool` command: up (embedded default), functions, gateway, admin, events, report, dashboard, deploy."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec

from swarmpool.bus.spec import Catalogue
from swarmpool.bus.verbs import VERBS, request_from
from swarmpool.catalogue import CatalogueError, load
from swarmpool.exits import EXIT_BAD_INPUT, EXIT_UNAVAILABLE
from swarmpool.guardrails import trust_summary

DEFAULT_GATEWAY = "http://127.0.0.1:8000"
DEFAULT_STATE_DIR = str(Path.home() / ".local/state/swarmpool")
CREDENTIALS_HELP = ("bus credentials of the {role} role: a `nats` context JSON (user, password, ca, cert, "
                    "key) as `swarmpool up` writes into its state dir, or a NATS .creds file")

log = logging.getLogger("swarmpool")


def _catalogue_or_exit(path: str | None, namespace: str | None = None) -> Catalogue:
    try:
        return load(path, namespace)
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
    up.add_argument("--no-packet-filter", action="store_true",
                    help="UNSAFE: start even when the packet filter cannot be installed or checked (not root); "
                         "safe only once an administrator ran the printed rules (docs/security-network.md)")
    up.add_argument("--dashboard-port", type=int, default=8001,
                    help="the operators' dashboard port, its own origin (default: 8001; 0: none)")
    up.add_argument("--dashboard-host", default="127.0.0.1", help="the dashboard's address (default: 127.0.0.1)")

    fn = sub.add_parser("functions", help="run the function handlers (a replica of the pool logic)")
    common(fn, True)
    fn.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="functions"))
    fn.add_argument("--metrics-port", type=int, metavar="PORT",
                    help="serve this host's prometheus metrics on http://HOST:PORT/metrics (default: none)")
    fn.add_argument("--metrics-host", default="127.0.0.1", help="address of the metrics port (default: 127.0.0.1)")
    fn.add_argument("--catalogue-deployed-at", type=float, metavar="EPOCH",
                    help="when --catalogue was deployed (unix time; `swarmpool deploy` sets it): it replaces a "
                         "different catalogue stored on the bus before then (default: store it only if none is)")

    gw = sub.add_parser("gateway", help="run the HTTP gateway")
    common(gw, True)
    gw.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="gateway"))
    gw.add_argument("--host", default="127.0.0.1",
                    help="address to listen on; 'default-route': the address of the interface that holds the "
                         "default route (in a stack: where the node's published port arrives, not the overlays)")
    gw.add_argument("--port", type=int, default=8000)

    operator = argparse.ArgumentParser(add_help=False)  # how `admin` and `events` reach the bus
    operator.add_argument("--namespace", default="sp", help="subject prefix (default: sp)")
    operator.add_argument("--nats-url",
                          help="NATS server URL (default: the credentials' url, else nats://127.0.0.1:4222)")
    operator.add_argument("--credentials", metavar="FILE", help=CREDENTIALS_HELP.format(role="operator")
                          + "; default: the operator's file in --state-dir, when there")
    operator.add_argument("--state-dir", default=DEFAULT_STATE_DIR,
                          help=f"the state dir of `swarmpool up` (default: {DEFAULT_STATE_DIR})")

    def verb_arguments(vp: argparse.ArgumentParser, name: str) -> None:
        verb = VERBS[name]
        for arg in verb.args:
            if arg.flags[0].startswith("-"):
                vp.add_argument(*arg.flags, dest=arg.field, help=arg.help, **arg.options)
            else:  # a positional's name is its dest
                vp.add_argument(arg.field, help=arg.help, **{"metavar": arg.flags[0].upper(), **arg.options})
        if verb.prints_link:
            vp.add_argument("--gateway", default=DEFAULT_GATEWAY, metavar="URL",
                            help=f"the gateway's address students open, printed before the link's path "
                                 f"(default: {DEFAULT_GATEWAY})")
        vp.add_argument("--json", action="store_true", help="print the reply as one JSON object")

    ad = sub.add_parser("admin", help="operator commands (the admin service on the bus)",
                        description="Operator commands, answered by the admin service of the functions hosts.")
    verbs = ad.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb in VERBS.values():
        verb_arguments(verbs.add_parser(verb.name, help=verb.help, description=verb.help, parents=[operator]),
                       verb.name)

    lk = sub.add_parser("link", parents=[operator], help="print a lecture link of an app (`admin link`)",
                        description=VERBS["link"].help + ". Prints the URL to share.")
    verb_arguments(lk, "link")
    lk.set_defaults(verb="link")

    ev = sub.add_parser("events", help="read the event log (instance transitions and admin commands)",
                        parents=[operator])
    ev.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    ev.add_argument("--app", help="only this app's events")
    ev.add_argument("--since", metavar="DURATION", help="only events of the last DURATION, e.g. 10m, 2h, 1d")
    fmt = ev.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one JSON object per line")
    fmt.add_argument("--csv", action="store_true", help="CSV with a header line")

    rp = sub.add_parser("report", parents=[operator],
                        help="how a lecture went: students served, click to page, waits, sessions, failures, cost",
                        description="Figures from the event log for a window: --since/--until (a duration ago, "
                                    "e.g. 2h, or a time, 2026-12-01T10:00 in UTC), or --lecture LABEL (the last "
                                    "class of the schedule entry, or the lecture link, with that label). Default: "
                                    "all that the event log keeps.")
    rp.add_argument("--app", help="only this app")
    rp.add_argument("--since", metavar="WHEN", help="from then (a duration ago or an ISO time)")
    rp.add_argument("--until", metavar="WHEN", help="until then (default: now)")
    rp.add_argument("--lecture", metavar="LABEL",
                    help='a schedule entry\'s label ("tue,thu 10:00-11:30", as `admin status` shows it) or a '
                         "lecture link's label")
    rfmt = rp.add_mutually_exclusive_group()
    rfmt.add_argument("--json", action="store_true", help="one JSON object (per app: served, click_to_page, ...)")
    rfmt.add_argument("--csv", action="store_true", help="CSV with a header line, one row per app")

    db = sub.add_parser("dashboard", parents=[operator],
                        help="serve the operators' dashboard here and print its one-time login URL",
                        description="The operators' dashboard of a running `up` (--state-dir: its state dir) or a "
                                    "deployed stack (--state-dir <state-dir>/stacks/<stack> --namespace <stack>).")
    db.add_argument("--host", default="127.0.0.1", help="the dashboard's address (default: 127.0.0.1)")
    db.add_argument("--port", type=int, default=8001, help="the dashboard's port (default: 8001)")
    db.add_argument("--catalogue", metavar="FILE", help="the file its reload button sends (default: no button)")

    dp = sub.add_parser("deploy", help="deploy the control plane as a swarm stack (DOCKER_HOST: a manager)")
    dp.add_argument("--catalogue", help="catalogue TOML file (default: the demo catalogue)")
    dp.add_argument("--stack", default="sp", help="stack name, also the namespace of instances (default: sp)")
    dp.add_argument("--port", type=int, default=8000, help="port each gateway publishes on its node (default: 8000)")
    dp.add_argument("--print", action="store_true", help="write the stack's files and print the compose file only")
    dp.add_argument("--image", help="control-plane image (default: swarmpool/control:<version>)")
    dp.add_argument("--nats-replicas", type=int, default=3, choices=(1, 3), help="NATS servers (default: 3)")
    dp.add_argument("--nats-port", type=int, help="publish the NATS client port for operators (needs TLS)")
    dp.add_argument("--operator-host", help="address in the operator's credentials (default: a manager's)")
    dp.add_argument("--tls-cert", help="nats-server certificate (PEM; names nats-1..3 and the operator host)")
    dp.add_argument("--tls-key", help="its private key (PEM)")
    dp.add_argument("--tls-ca", help="the CA that clients trust (PEM)")
    dp.add_argument("--docker-socket", help="engine socket on every node, mounted by function hosts and guards "
                                                    "(default: DOCKER_HOST's path; a service template such as "
                                                    "{{.Node.Hostname}} is expanded on each node)")
    dp.add_argument("--functions-replicas", type=int, default=2, help="function hosts (default: 2)")
    dp.add_argument("--instances-subnet", metavar="CIDR",
                    help="the instances' overlay (default: a free block of 10.128.0.0/9 sized for the catalogue's "
                         "max_instances, at least a /24)")
    dp.add_argument("--gateway-label", help="run gateways on nodes labelled LABEL=true instead of on managers")
    dp.add_argument("--encrypt-overlays", action="store_true",
                    help="encrypt the stack's overlays between nodes (IPsec; see docs/design-network.md)")
    dp.add_argument("--with-registry-auth", action="store_true",
                    help="images from a registry: pass credentials to the nodes, pin by digest")
    dp.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for a gateway (default: 180)")
    dp.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=f"stack files and credentials (default: {DEFAULT_STATE_DIR})")
    ud = sub.add_parser("undeploy", help="remove a deployed stack and every instance it started")
    ud.add_argument("--stack", default="sp", help="stack name (default: sp)")
    ud.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for removal (default: 120)")

    gd = sub.add_parser("guard", help="close in this node's instances of a deployed stack (a global service of it)",
                        description="Installs, in each local instance container's network namespace, rules that "
                                    "refuse every new connection out, then opens the port the gateway reaches it on "
                                    "(docs/design-network.md). Needs the node's engine socket (DOCKER_HOST).")
    gd.add_argument("--namespace", required=True, help="the stack whose instances it guards")
    gd.add_argument("--image", help="image of the helper containers, with iptables (default: swarmpool/control:<version>)")
    gd.add_argument("--interval", type=float, default=10.0, help="seconds between full reconciles (default: 10)")

    check = sub.add_parser("check", help="validate a catalogue file and exit")
    check.add_argument("catalogue", nargs="?")
    check.add_argument("--namespace", help="the stack it is for: settings.network must be its <namespace>_instances "
                                           "(default: any stack's)")
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
        catalogue = _catalogue_or_exit(args.catalogue, args.namespace)
        print(f"ok: {len(catalogue.apps)} apps: {', '.join(catalogue.apps)}")
        for name, app in catalogue.apps.items():
            if flags := trust_summary(app, catalogue.settings):
                print(f"  {name} is trusted with {flags}")
        return
    if args.command == "guard":
        from swarmpool.deploy import control_image
        from swarmpool.swarm import guard

        try:
            raise SystemExit(guard.main(args.namespace, args.image or control_image(), args.interval))
        except KeyboardInterrupt:
            raise SystemExit(0) from None
    if args.command in ("deploy", "undeploy"):
        from swarmpool import deploy

        raise SystemExit(deploy.deploy(args) if args.command == "deploy" else deploy.undeploy(args))
    if args.command in ("admin", "link"):
        raise SystemExit(asyncio.run(_admin(args)))
    if args.command == "report":
        from swarmpool.report_cli import run_report

        raise SystemExit(asyncio.run(run_report(args)))
    if args.command == "events":
        from swarmpool.events import read_events

        try:
            raise SystemExit(asyncio.run(read_events(args)))
        except KeyboardInterrupt:
            raise SystemExit(0) from None
    from swarmpool import launcher

    if args.command == "dashboard":
        try:
            _run(launcher.dashboard(args))
        except launcher.Unavailable as err:
            print(f"swarmpool: {err}", file=sys.stderr)
            raise SystemExit(EXIT_UNAVAILABLE) from None
        except KeyboardInterrupt:
            pass
        return
    catalogue = _catalogue_or_exit(args.catalogue, args.namespace)  # before touching anything

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
    except CatalogueError as err:  # `up`: a guardrail that needs the images (they are there only now)
        print(f"swarmpool: bad catalogue: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except KeyboardInterrupt:
        pass


def admin_request(args: argparse.Namespace) -> Any:
    """The verb's request Struct from the command line (validated like the service will); ValueError if bad."""
    verb = VERBS[args.verb]
    try:
        return request_from(verb, vars(args)), verb
    except CatalogueError as err:  # reload: the file is read and checked here, by the loader `up` starts with
        print(f"swarmpool: bad catalogue: {err}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except ValueError as err:
        raise ValueError(f"admin {err}") from None
    except OSError as err:
        raise ValueError(f"admin {verb.name}: cannot read {args.text}: {err.strerror}") from None


async def _admin(args: argparse.Namespace) -> int:
    import nats.errors

    from swarmpool.bus.messages import AdminResult, ErrorReply
    from swarmpool.bus.wire import encode
    from swarmpool.bus.subjects import Subjects
    from swarmpool.operator import operator_connection, requester

    try:
        request, verb = admin_request(args)
    except ValueError as err:
        print(f"swarmpool: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    request = msgspec.structs.replace(request, by=requester())
    nc = await operator_connection(args)
    if isinstance(nc, int):
        return nc
    subject = Subjects(args.namespace).admin(verb.name)
    try:
        msg = await nc.request(subject, encode(request), timeout=15)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        print(f"swarmpool: no admin service answers on {subject}: is `swarmpool up` or `swarmpool functions` "
              f"running for namespace {args.namespace}, and are these the operator's credentials?",
              file=sys.stderr)
        return EXIT_UNAVAILABLE
    finally:
        await nc.close()
    try:
        reply = msgspec.json.decode(msg.data, type=AdminResult | ErrorReply)
    except msgspec.DecodeError as err:
        print(f"swarmpool: unexpected answer on {subject}: {err}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if isinstance(reply, AdminResult) and reply.link is not None and reply.link.path:
        url = args.gateway.rstrip("/") + reply.link.path
        reply = msgspec.structs.replace(reply, link=msgspec.structs.replace(reply.link, path=url))
    if args.json:
        print(msgspec.json.encode(reply).decode())
        return EXIT_BAD_INPUT if isinstance(reply, ErrorReply) else 0
    if isinstance(reply, ErrorReply):
        shown = "bad catalogue" if reply.error == "bad_catalogue" else reply.error
        print(f"swarmpool: {shown}: {reply.detail}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if reply.link is not None and reply.link.path:
        print(reply.detail, file=sys.stderr)
        print(reply.link.path)  # alone on stdout: `swarmpool link ... | xclip` copies the URL
        return 0
    if reply.detail:
        print(reply.detail)
    if reply.apps:
        print(status_table(reply.apps))
    if reply.links:
        print(links_table(reply.links))
    return 0


def links_table(links: list[Any]) -> str:
    """The lecture links as an aligned table (never their URLs)."""
    def when(at: float) -> str:
        return datetime.fromtimestamp(at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    rows = [("id", "app", "claims", "max", "expires", "state", "label")]
    rows += [(f.id, f.app, str(f.claims), "-" if f.max is None else str(f.max), when(f.expires), f.state, f.label)
             for f in links]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def status_table(apps: dict[str, Any]) -> str:
    """The status of each app as an aligned table."""
    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value:.3g}s"

    rows = [("app", "target", "ready", "starting", "claimed", "retiring", "failed", "claim", "to ready",
             "trusted", "target set by")]
    for a in apps.values():
        rows.append((a.app, str(a.target), str(a.ready), str(a.starting), str(a.claimed), str(a.retiring),
                     str(a.failed), seconds(a.claim_seconds), seconds(a.ready_seconds),
                     ",".join(a.trusted) or "-", a.target_source))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) if i in (0, 9, 10) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     .rstrip() for row in rows)


if __name__ == "__main__":
    main()
