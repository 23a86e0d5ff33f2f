"""A Docker engine of the tests' own, in a network namespace, for tests that restart or kill an engine.

DESIGN's recipe ("Testing a cluster on one machine"), one node: a network namespace joined to
the host by a veth pair (private addresses used only here), a `dockerd` started in it with
`nsenter --net=` (not `ip netns exec`, which remounts /sys), its own data root, exec root,
pidfile and socket, a single-node swarm advertised on the namespace's address, and the echo
image copied in with `docker save | docker load`. Processes that must reach the instances'
ports (bound on the namespace's 127.0.0.1) run inside the namespace (`Engine.inside`); the test
talks to them at `Engine.address`, the namespace's end of the veth pair.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import docker

DOCKERD = "/usr/sbin/dockerd"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def _run(*cmd: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(cmd, check=check, capture_output=True, **kw)  # type: ignore[call-overload,no-any-return]


@dataclass
class Engine:
    """One namespaced Docker engine (a single-node swarm manager)."""

    name: str  # network namespace name
    address: str  # the namespace's address (the test reaches processes inside through it)
    root: Path  # data root, exec root, socket and log live under it
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def env(self) -> dict[str, str]:
        """The environment of a process that uses this engine (docker.from_env reads DOCKER_HOST)."""
        return {**os.environ, "DOCKER_HOST": self.docker_host}

    def inside(self, *cmd: str) -> list[str]:
        """`cmd` run in the engine's network namespace."""
        return ["nsenter", f"--net=/var/run/netns/{self.name}", *cmd]

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.docker_host, timeout=30)

    def docker(self, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        return _run("docker", "-H", self.docker_host, *args, **kw)

    # -- the daemon -------------------------------------------------------------------------

    def start(self) -> None:
        """Start dockerd in the namespace and wait until it answers."""
        assert self.proc is None or self.proc.poll() is not None
        (self.root / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.inside(DOCKERD, "--data-root", str(self.root / "data"), "--exec-root", str(self.root / "exec"),
                        "--pidfile", str(self.root / "docker.pid"), "-H", self.docker_host,
                        "--bridge=none", "--log-level=warn"),
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd in {self.name} exited with {self.proc.returncode}; see {self.log_path}")
            if self.socket.exists() and self.docker("version", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"dockerd in {self.name} did not answer within {START_TIMEOUT:.0f} s; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop dockerd as a package upgrade or a reboot does (SIGTERM), and wait until it is gone."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@contextmanager
def namespaced_engine(name: str, subnet: int, images: list[str]) -> Iterator[Engine]:
    """A fresh engine in namespace `name` on 10.231.<subnet>.0/30, with `images` copied in; all of
    it (daemon, data root, namespace, veth pair) is removed afterwards."""
    host_if, ns_if = f"vh-{name}"[:15], f"vn-{name}"[:15]
    host_addr, ns_addr = f"10.231.{subnet}.1", f"10.231.{subnet}.2"
    root = Path(f"/var/lib/swarmpool-test-{name}")  # beside /var/lib/docker: overlay2 needs a real fs
    engine = Engine(name=name, address=ns_addr, root=root, log_path=Path(f"/tmp/swarmpool-test-{name}.log"))
    with ExitStack() as stack:
        _run("ip", "netns", "add", name)
        stack.callback(_run, "ip", "netns", "delete", name, check=False)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        stack.callback(_run, "ip", "link", "delete", host_if, check=False)
        _run("ip", "link", "set", ns_if, "netns", name)
        _run("ip", "addr", "add", f"{host_addr}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", name, "ip", "addr", "add", f"{ns_addr}/30", "dev", ns_if)
        _run("ip", "netns", "exec", name, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", name, "ip", "link", "set", "lo", "up")
        stack.callback(_remove_root, root)
        stack.callback(engine.stop)
        engine.start()
        engine.docker("swarm", "init", "--advertise-addr", ns_addr)
        for image in images:
            save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
            engine.docker("load", stdin=save.stdout)
            assert save.wait() == 0, f"docker save {image} failed"
        yield engine


def _remove_root(root: Path) -> None:
    """The data root, after unmounting whatever the stopped daemon left mounted under it."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()
              if line.split()[1].startswith(str(root))]
    for mount in sorted(mounts, key=len, reverse=True):
        _run("umount", "-l", mount, check=False)
    shutil.rmtree(root, ignore_errors=True)
