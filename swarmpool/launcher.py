"""Running the parts: `up` (everything in one process, embedded NATS), `functions`, `gateway`."""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Protocol, TypeVar

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.errors import BucketNotFoundError

from swarmpool.bus.roles import Access
from swarmpool.bus.runtime import Context
from swarmpool.bus.wire import connect
from swarmpool.bus.spec import Catalogue, Settings
from swarmpool.bus.messages import CatalogueFile
from swarmpool.bus.links import KeysMirror
from swarmpool.bus.queue import TicketStore
from swarmpool.bus.state import CatalogueStore, InstanceStore
from swarmpool.bus.subjects import Subjects
from swarmpool.functions.admin import status_of
from swarmpool.swarm.adapter import Swarm
from swarmpool.swarm.model import SwarmError, SwarmUnavailable
from swarmpool.swarm.firewall import Firewall, FirewallUnavailable
from swarmpool.catalogue import check_images, check_network, default_catalogue_path, parse, without_apps
from swarmpool.guardrails import trust_summary
from swarmpool.host import functions_host, parse_file
from swarmpool.natsd import EmbeddedNats, free_port

log = logging.getLogger("swarmpool")


class Unavailable(Exception):
    """Something swarmpool needs is not there (Docker, NATS, an image); the message says what."""


def _stop_event() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def _connect(url: str, role: str, namespace: str, access: Access | None = None) -> NATS:
    """Connect as one bus role, failing fast if NATS is not there at start (or refuses the
    credentials); later outages are reconnected forever."""
    try:
        return await connect(url, name=f"swarmpool-{role}-{socket.gethostname()}", access=access,
                             inbox_prefix=Subjects(namespace).inbox(role))
    except Exception as err:
        raise Unavailable(f"cannot reach NATS at {url} as {role}: {err or type(err).__name__}") from None


def access_from(args: argparse.Namespace) -> Access | None:
    """The credentials named by --credentials (None: connect without); a bad file is Unavailable."""
    if not getattr(args, "credentials", None):
        return None
    try:
        return Access.load(args.credentials)
    except ValueError as err:
        raise Unavailable(str(err)) from None


async def _swarm(namespace: str, init: bool) -> Swarm:
    swarm = Swarm(namespace)
    try:
        await swarm.ping()
        if init and await swarm.ensure_swarm():
            print("initialised a single-node Docker swarm (advertise 127.0.0.1)", flush=True)
    except SwarmUnavailable as err:
        await swarm.close()
        raise Unavailable(f"Docker is not usable: {err}\n  install it (apt-get install -y docker.io), "
                          "start dockerd, and run swarmpool again") from None
    return swarm


async def packet_filter(stack: AsyncExitStack, namespace: str, settings: Settings, unfiltered: bool = False,
                        owner: Ownership | None = None) -> None:
    """Close instances in (nothing reaches them but the gateway; they reach only what their egress allows),
    removed on exit while this copy still owns the namespace. Without the right to: go on only when an
    administrator's rules are in place or the operator said `unfiltered` (--no-packet-filter), else
    Unavailable saying what to run."""
    firewall = Firewall(namespace, resolvers=list(settings.egress_dns) or None)

    async def remove() -> None:
        if owner is not None and not owner.held:  # the copy that took the namespace over filters its instances
            log.warning("namespace %s is no longer ours: its packet filter stays", namespace)
            return
        await asyncio.to_thread(firewall.remove)

    stack.push_async_callback(remove)  # also what a failed install left
    try:
        await asyncio.to_thread(firewall.install)
    except FirewallUnavailable as err:
        commands = "\n  ".join(firewall.commands())
        if await asyncio.to_thread(firewall.verified):
            print(f"packet filter: not installed by this process ({err}), but an administrator's rules are in "
                  f"place (iptables chain {firewall.chain})", flush=True)
            return
        if not unfiltered:
            raise Unavailable(
                f"cannot install the packet filter ({err}): instances would NOT be closed in. Run swarmpool up "
                "as root, or have an administrator run (see docs/security-network.md):\n  " + commands +
                "\nthen start again (a process that may not read the rules cannot check them: --no-packet-filter "
                "starts anyway, unsafe unless they are in place)") from None
        print(f"WARNING: --no-packet-filter: instances are NOT closed in ({err}) unless an administrator ran "
              "these (see docs/security-network.md): their code can reach this host, the LAN and each other's "
              "addresses, and other containers and IPv6 can reach their ports:\n  " + commands, flush=True)
        return
    print(f"packet filter installed (iptables chain {firewall.chain})", flush=True)


CANNOT_BUILD_HERE = 3  # a build recipe's exit code for "this machine lacks what the image needs" (no sources)


async def ensure_images(swarm: Swarm, catalogue: Catalogue, base: Path, build: bool) -> set[str]:
    """Every app's image must exist on this node; build the missing ones that have a recipe. Returns the
    apps whose recipe failed (each said in one line): `up` serves the others without them."""
    failed: set[str] = set()
    for app in catalogue.apps.values():
        if await swarm.has_image(app.image):
            continue
        if not build or not app.build:
            raise Unavailable(f"image {app.image} (app {app.name}) is not on this node"
                              + (f"; build it with: {app.build}" if app.build else ""))
        started = time.monotonic()
        code, last = await _run_recipe(app.build, base, f"building {app.image} for {app.name} (first run only): "
                                       f"{app.build}")
        if code != 0:
            why = f": {last}" if last else ""
            print(f"not serving {app.name}: building {app.image} failed (exit {code}){why}", flush=True)
            failed.add(app.name)
            continue
        print(f"built {app.image} in {time.monotonic() - started:.0f} s", flush=True)
    if failed and failed == set(catalogue.apps):
        raise Unavailable("no app's image could be built: nothing to serve")
    return failed


async def _run_recipe(command: str, cwd: Path, announce: str) -> tuple[int, str]:
    """Run a build recipe, its output shown as it comes, after `announce`. A recipe that ends at once with
    at most one line (exit CANNOT_BUILD_HERE: it cannot build on this machine) shows nothing: the caller's
    one line says why. Returns the exit code and the last line of output."""
    proc = await asyncio.create_subprocess_exec("bash", "-c", command, cwd=str(cwd), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    assert proc.stdout is not None
    held: list[str] = []  # the first line waits for a second one (or for the end)
    shown = False
    last = ""
    async for raw in proc.stdout:
        line = raw.decode(errors="replace").rstrip()
        if not line:
            continue
        last = line
        if not shown and not held:
            held.append(line)
            continue
        if not shown:
            print(announce, flush=True)
            print(held.pop(), flush=True)
            shown = True
        print(line, flush=True)
    code = await proc.wait()
    if not shown and (held or code == 0) and code != CANNOT_BUILD_HERE:
        print(announce, flush=True)
        for line in held:
            print(line, flush=True)
    return code, last


def warn_trusted(catalogue: Catalogue) -> None:
    """Say, per app, which unsafe settings the catalogue trusts it with (nothing else stops them)."""
    for name, app in catalogue.apps.items():
        if summary := trust_summary(app, catalogue.settings):
            print(f"WARNING: app {name} is trusted with {summary}: the code its students run gets that too "
                  "(see docs/security-instances.md)", flush=True)


@asynccontextmanager
async def serve_gateway(nc: NATS, catalogue: Catalogue, namespace: str, host: str,
                        port: int, extra_metrics: tuple[Any, ...] = ()) -> AsyncIterator[web.AppRunner]:
    """The gateway; `extra_metrics` (prometheus registries) are served on its /metrics too."""
    from swarmpool.bus.client import Bus
    from swarmpool.gateway.app import GATEWAY, make_app, make_runner

    subjects = Subjects(namespace)
    try:  # the gateway's bus role only reads the records: the functions create the bucket
        store = await InstanceStore.open(nc, subjects, time.time, create=False)
    except BucketNotFoundError:
        raise Unavailable(f"no instance records in namespace {namespace} yet: start `swarmpool functions` "
                          "first") from None
    catalogues = await CatalogueStore.open(nc, subjects)  # the catalogue on the bus (admin reload)
    link_keys = await KeysMirror.open(nc, subjects)  # lecture links' signing keys (admin rotate)
    tickets = await _open_queue(nc, subjects)
    async with store, _closing(catalogues), _closing(link_keys), \
            (_closing(tickets) if tickets is not None else nullcontext()):
        app = make_app(bus=Bus(nc), subjects=subjects, store=store, catalogue=catalogue,
                       host_label=f"gw-{socket.gethostname()}-{os.getpid()}", tickets=tickets)
        gw = app[GATEWAY]
        gw.link_keys = link_keys

        def follow(file: CatalogueFile) -> None:
            if file.version != gw.catalogue_version and (parsed := parse_file(file)) is not None:
                gw.use(parsed, file.version)
                log.info("gateway follows catalogue %s (%d apps)", file.version, len(parsed.apps))

        catalogues.on_change(follow)
        if (stored := catalogues.current()) is not None:
            follow(stored)
        app[GATEWAY].metrics.include(*extra_metrics)
        runner = make_runner(app, catalogue)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as err:
            await runner.cleanup()
            raise Unavailable(f"cannot listen on {host}:{port}: {err.strerror}") from None
        try:
            yield runner
        finally:
            await runner.cleanup()


QUEUE_WAIT = 30.0  # seconds a gateway waits for the functions to make the queue bucket after the records' bucket


async def _open_queue(nc: NATS, subjects: Subjects, wait: float = QUEUE_WAIT) -> TicketStore | None:
    """The queues' mirror (read-only), or None when the functions have not made the bucket within `wait` s (an
    older version: clicks then get the waiting room that retries). A functions host makes it just after the
    records' bucket: a gateway that starts in between (a deployed stack's, started with its function hosts) waits
    for it, or it would serve without the queue for its whole life."""
    deadline = time.monotonic() + wait
    while True:
        try:
            return await TicketStore.open(nc, subjects, create=False)
        except BucketNotFoundError:
            if time.monotonic() >= deadline:
                log.warning("no queue bucket in namespace %s: clicks that find no instance get the waiting room",
                            subjects.prefix)
                return None
        await asyncio.sleep(0.5)


@asynccontextmanager
async def serve_dashboard(nc: NATS, namespace: str, host: str, port: int, state_dir: Path,
                          catalogue_path: str | None, gateway_url: str = "") -> AsyncIterator[str]:
    """The operators' dashboard on its own listener (its own origin), connected as the operator;
    yields its one-time login URL."""
    from swarmpool.bus.client import Bus
    from swarmpool.gateway.dashboard import DASHBOARD, load_key, make_dashboard

    app = make_dashboard(Bus(nc), Subjects(namespace), load_key(state_dir), catalogue_path, gateway_url)
    runner = web.AppRunner(app, access_log=None)  # login URLs carry tokens
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise Unavailable(f"cannot serve the dashboard on {host}:{port}: {err.strerror}") from None
    try:
        yield f"http://{host}:{port}/login?token={app[DASHBOARD].new_login()}"
    finally:
        await runner.cleanup()


class _Closable(Protocol):
    async def close(self) -> None: ...


T = TypeVar("T", bound=_Closable)


@asynccontextmanager
async def _closing(store: T) -> AsyncIterator[T]:
    try:
        yield store
    finally:
        await store.close()


def catalogue_text(args: argparse.Namespace) -> tuple[str, str]:
    """The text and path of the catalogue file `args` name (it was just loaded from there)."""
    path = Path(args.catalogue or default_catalogue_path()).resolve()
    return path.read_text(), str(path)


async def _progress(ctx: Context, stop: asyncio.Event) -> None:
    """Print warm-up progress (ready/target per app) whenever it changes."""
    last = ""
    while not stop.is_set():
        line = "pool: " + "; ".join(
            f"{a.app} {a.ready}/{a.target} ready, {a.starting} starting, {a.claimed} in use"
            + ("" if a.target_source == "catalogue" else f" (target: {a.target_source})")
            for a in (status_of(ctx, name) for name in ctx.catalogue.apps))
        if line != last:
            print(line, flush=True)
            last = line
        try:
            async with asyncio.timeout(1):
                await stop.wait()
        except TimeoutError:
            pass


async def up(catalogue: Catalogue, args: argparse.Namespace) -> None:
    stop = _stop_event()
    async with AsyncExitStack() as stack:
        state_dir = Path(args.state_dir).expanduser().resolve()
        stack.enter_context(_lock_state_dir(state_dir))  # before anything: two copies never share a store
        _check_port_free(args.host, args.port)
        swarm = await _swarm(args.namespace, init=True)
        stack.push_async_callback(swarm.close)
        owner = await stack.enter_async_context(_own_namespace(swarm, args.namespace, state_dir, stop))
        base = Path(args.catalogue or default_catalogue_path()).resolve().parent
        text, source = catalogue_text(args)
        unbuilt = await ensure_images(swarm, catalogue, base, build=not args.no_build)
        if unbuilt:  # served without them, on the bus too (the catalogue other hosts follow)
            text = without_apps(text, unbuilt)
            catalogue = parse(text, source, args.namespace)
        # root by name needs the images: refused here, before the packet filter or NATS
        try:
            path = str(Path(args.catalogue or default_catalogue_path()))
            await check_images(catalogue, path, swarm.image_accounts)
            await check_network(catalogue, path, args.namespace, swarm.network_info)  # the engine's, not a name
        except SwarmError as err:
            raise Unavailable(str(err)) from None
        warn_trusted(catalogue)
        if catalogue.settings.publish_ports:
            await packet_filter(stack, args.namespace, catalogue.settings,
                                unfiltered=bool(getattr(args, "no_packet_filter", False)), owner=owner)
        url = args.nats_url
        fn_access = gw_access = None
        if url is None:
            natsd = EmbeddedNats(Path(args.state_dir).expanduser(), port=_port_or_free(4222),
                                 namespaces=[args.namespace])
            await stack.enter_async_context(natsd)
            url = natsd.url
            fn_access, gw_access = natsd.access("functions"), natsd.access("gateway")
            print(f"embedded nats-server on {url} (state in {args.state_dir}; operator credentials: "
                  f"{natsd.credentials('operator')})", flush=True)
        # two connections, one per bus role: the gateway part runs as restricted as a gateway host
        nc = await _connect(url, "functions", args.namespace, fn_access)
        stack.push_async_callback(nc.drain)
        stack.push_async_callback(_remove_instances, swarm, nc, args.namespace, owner)
        # a name that outlives the process: after a crash, its singletons' leases are taken back at once
        ctx = await stack.enter_async_context(functions_host(nc, catalogue, swarm, args.namespace,
                                                             host=f"up-{socket.gethostname()}",
                                                             catalogue_text=text, catalogue_source=source,
                                                             replace_catalogue=True))
        # whatever happened while no copy ran (an engine restart, a power cut) was not seen
        await ctx.config.mark_gap("swarmpool up started")
        gw_nc = await _connect(url, "gateway", args.namespace, gw_access)
        stack.push_async_callback(gw_nc.drain)
        await stack.enter_async_context(serve_gateway(gw_nc, catalogue, args.namespace, args.host, args.port,
                                                      extra_metrics=(ctx.metrics.registry,)))
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "") else args.host
        if fn_access is not None and getattr(args, "dashboard_port", None):
            ops_nc = await _connect(url, "operator", args.namespace, natsd.access("operator"))
            stack.push_async_callback(ops_nc.drain)
            login = await stack.enter_async_context(serve_dashboard(
                ops_nc, args.namespace, args.dashboard_host, args.dashboard_port, state_dir, source,
                f"http://{shown}:{args.port}"))
            print(f"dashboard: {login}  (one-time login link; operators only)", flush=True)
        print(f"swarmpool is up: http://{shown}:{args.port}/  (Ctrl-C stops it)", flush=True)
        for name in catalogue.apps:
            print(f"  student link for {name}: http://{shown}:{args.port}/launch/{name}", flush=True)
        await _progress(ctx, stop)
        print("stopping: removing the instances of this swarmpool ...", flush=True)


async def dashboard(args: argparse.Namespace) -> None:
    """`swarmpool dashboard`: the operators' dashboard alone, on this machine, as the operator of a running
    `up` (its state dir) or deployed stack (`<state-dir>/stacks/<stack>`); prints the one-time login URL."""
    from swarmpool.bus.roles import credentials_path

    stop = _stop_event()
    state_dir = Path(args.state_dir).expanduser().resolve()
    found = credentials_path(state_dir, "operator")
    if not args.credentials and not found.exists():
        raise Unavailable(f"no operator credentials in {state_dir}: give the state dir of `swarmpool up`, "
                          "or `<state-dir>/stacks/<stack>` of a deploy with --nats-port, or --credentials")
    try:
        access = Access.load(args.credentials or found)
    except ValueError as err:
        raise Unavailable(str(err)) from None
    url = args.nats_url or access.url or "nats://127.0.0.1:4222"
    async with AsyncExitStack() as stack:
        nc = await _connect(url, "operator", args.namespace, access)
        stack.push_async_callback(nc.drain)
        login = await stack.enter_async_context(serve_dashboard(
            nc, args.namespace, args.host, args.port, state_dir, args.catalogue))
        print(f"dashboard of {args.namespace} on {url}: {login}  (one-time login link; operators only; "
              "Ctrl-C stops it)", flush=True)
        await stop.wait()


OWNER_RENEW = 5.0  # seconds between renewals of the namespace's owner lease on the engine
OWNER_TTL = 20.0  # a lease not renewed for this long belonged to a copy that died


class Ownership:
    """Whether this `up` still owns its namespace on the engine."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.held = True


@contextmanager
def _lock_state_dir(state_dir: Path) -> Iterator[None]:
    """One `up` per state dir (so two nats-servers never share a store); the lock dies with us."""
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = open(state_dir / "up.lock", "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.seek(0)
        lock.close()
        raise Unavailable(f"another swarmpool up is running with the state dir {state_dir}; "
                          "stop it first, or give this one its own --state-dir") from None
    try:
        yield
    finally:
        lock.close()


def _check_port_free(host: str, port: int) -> None:
    """Fail before touching anything when the gateway's port is taken."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host or "0.0.0.0", port))
        except OSError as err:
            raise Unavailable(f"cannot listen on {host}:{port}: {err.strerror}") from None


@asynccontextmanager
async def _own_namespace(swarm: Swarm, namespace: str, state_dir: Path,
                         stop: asyncio.Event) -> AsyncIterator[Ownership]:
    """Hold the namespace's owner lease on the engine while `up` runs; refuse to start when another
    running copy holds it. A lost lease stops this copy (and it then removes nothing)."""
    owner = Ownership(f"{socket.gethostname()}:{state_dir}")
    held_by = await swarm.claim_namespace(owner.holder, OWNER_TTL)
    if held_by is not None:
        raise Unavailable(f"namespace {namespace} on this Docker engine belongs to another running "
                          f"swarmpool up: {held_by}; stop that one, or use --namespace")

    async def renew() -> None:
        while True:
            await asyncio.sleep(OWNER_RENEW)
            try:
                owner.held = await swarm.renew_namespace(owner.holder)
            except Exception as err:  # the engine away for a moment: keep trying, until the TTL says otherwise
                log.warning("could not renew the owner lease of %s: %s", namespace, err)
                continue
            if not owner.held:
                log.error("namespace %s was taken over by another swarmpool up: stopping, removing nothing",
                          namespace)
                stop.set()
                return

    renewer = asyncio.create_task(renew(), name="owner-lease")
    try:
        yield owner
    finally:
        renewer.cancel()
        await asyncio.gather(renewer, return_exceptions=True)
        if owner.held:
            await swarm.release_namespace(owner.holder)


async def _remove_instances(swarm: Swarm, nc: NATS, namespace: str, owner: Ownership) -> None:
    """On a clean stop, nothing of ours stays behind: services removed, records deleted (only while
    this copy still owns the namespace: another copy's instances are never touched)."""
    if not owner.held:
        return
    removed = await swarm.remove_all()
    async with await InstanceStore.open(nc, Subjects(namespace), time.time) as store:
        for record in store.all():
            await store.delete(record, "swarmpool stopped")
    print(f"removed {removed} instances", flush=True)


async def functions(catalogue: Catalogue, args: argparse.Namespace) -> None:
    stop = _stop_event()
    access = access_from(args)
    swarm = await _swarm(args.namespace, init=False)
    try:
        nc = await _connect(args.nats_url, "functions", args.namespace, access)
        try:
            text, source = catalogue_text(args)
            async with functions_host(nc, catalogue, swarm, args.namespace, catalogue_text=text,
                                      catalogue_source=source,
                                      catalogue_deployed_at=args.catalogue_deployed_at) as ctx, \
                    serve_metrics(ctx.metrics, args.metrics_host, args.metrics_port):
                print("functions running", flush=True)
                await stop.wait()
        finally:
            await nc.drain()
    finally:
        await swarm.close()


def default_route_address(routes: Path = Path("/proc/net/route")) -> str:
    """The IPv4 address of the interface that holds the default route: in a swarm task, its docker_gwbridge end,
    where a host-mode published port arrives (the overlays hold no default route)."""
    import fcntl
    import struct

    try:
        lines = routes.read_text().splitlines()[1:]
    except OSError as err:
        raise Unavailable(f"cannot read the routes ({err.strerror}) to find the address to listen on") from None
    for fields in (line.split() for line in lines):
        if len(fields) > 2 and fields[1] == "00000000":  # destination 0.0.0.0: the default route
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", fields[0].encode()[:15]))  # SIOCGIFADDR
            return socket.inet_ntoa(packed[20:24])
    raise Unavailable("no default route: cannot find the address to listen on (--host default-route)")


async def gateway(catalogue: Catalogue, args: argparse.Namespace) -> None:
    stop = _stop_event()
    host = default_route_address() if args.host == "default-route" else args.host
    nc = await _connect(args.nats_url, "gateway", args.namespace, access_from(args))
    try:
        async with serve_gateway(nc, catalogue, args.namespace, host, args.port):
            print(f"gateway on http://{host}:{args.port}/", flush=True)
            await stop.wait()
    finally:
        await nc.drain()


@asynccontextmanager
async def serve_metrics(metrics: Any, host: str, port: int | None) -> AsyncIterator[None]:
    """A function host's /metrics (prometheus text) on its own port; nothing when `port` is None."""
    if port is None:
        yield
        return

    async def render(request: web.Request) -> web.Response:
        return web.Response(body=metrics.render(), headers={"Content-Type": metrics.content_type})

    app = web.Application()
    app.router.add_get("/metrics", render)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as err:
        await runner.cleanup()
        raise Unavailable(f"cannot serve metrics on {host}:{port}: {err.strerror}") from None
    print(f"metrics on http://{host}:{port}/metrics", flush=True)
    try:
        yield
    finally:
        await runner.cleanup()


def _port_or_free(preferred: int) -> int:
    """The conventional NATS port when it is free (so `swarmpool admin` finds it), else any free one."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            return free_port()
