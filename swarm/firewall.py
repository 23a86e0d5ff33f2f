"""Packet filter rules that keep a namespace's instance ports for the gateway alone (iptables and ip6tables).

Published instances join the namespace's own bridge (`sp-<namespace>`), whose ports bind 127.0.0.1
and whose containers cannot talk to each other (see `Swarm._ensure_bridge`). These rules are the
second wall, in a chain of our own jumped to from Docker's chains, tagged so they are removed by tag:

- forwarded traffic (`DOCKER-USER`): no new connection into an instance, from any interface or
  container (a LAN host that reaches a DNAT'd port, a container on another bridge);
- traffic to the host (`INPUT`): no new TCP connection from an instance to the port range Docker
  publishes in, whatever address it uses (the bridge gateway, the host's LAN address);
- IPv6 (Docker's IPv6 is off unless configured): the same, plus no new TCP connection from any
  interface but loopback to the published port range, in case a proxy listens on `::`.

The gateway and the prober on the host reach instances at 127.0.0.1:<port> (docker-proxy, local
traffic), which none of these rules touch. The rules never change per instance.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from swarmpool.swarm.adapter import bridge_name

log = logging.getLogger(__name__)

_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # Docker allocates published ports from it
_DEFAULT_PORT_RANGE = (32768, 60999)


class FirewallUnavailable(Exception):
    """iptables is missing or this process may not change the rules; the message says what to run."""


def published_port_range() -> tuple[int, int]:
    """The range the engine picks published ports from (the kernel's ephemeral range)."""
    try:
        low, high = _PORT_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _DEFAULT_PORT_RANGE


class Firewall:
    """The filter rules of one namespace: `install()` at start (idempotent), `remove()` at stop."""

    def __init__(self, namespace: str, port_range: tuple[int, int] | None = None) -> None:
        self.namespace = namespace
        self.bridge = bridge_name(namespace)
        self.chain = f"SWARMPOOL-{namespace.upper()}"
        self.tag = f"swarmpool:{namespace}"
        low, high = port_range or published_port_range()
        self.ports = f"{low}:{high}"

    # -- the rules, as argument lists ---------------------------------------------------------------

    def rules(self, tool: str, forward_chain: str) -> list[list[str]]:
        """The commands (without the tool's name) that install the rules for `tool` (iptables or ip6tables)."""
        tag = ["-m", "comment", "--comment", self.tag]
        new = ["-m", "conntrack", "--ctstate", "NEW"]
        rules = [
            ["-N", self.chain],
            ["-A", self.chain, "-o", self.bridge, *new, *tag, "-j", "DROP"],
            ["-A", self.chain, "-i", self.bridge, "-p", "tcp", "--dport", self.ports, *new, *tag, "-j", "DROP"],
        ]
        if tool == "ip6tables":
            rules.append(["-A", self.chain, "!", "-i", "lo", "-p", "tcp", "--dport", self.ports, *new, *tag,
                          "-j", "DROP"])
        rules.append(["-A", self.chain, *tag, "-j", "RETURN"])
        rules.append(["-I", forward_chain, "1", "-o", self.bridge, *tag, "-j", self.chain])
        if tool == "ip6tables":
            rules.append(["-I", "INPUT", "1", *tag, "-j", self.chain])
        else:
            rules.append(["-I", "INPUT", "1", "-i", self.bridge, *tag, "-j", self.chain])
        return rules

    def commands(self) -> list[str]:
        """The shell commands an administrator runs to install the rules by hand."""
        lines = []
        for tool in ("iptables", "ip6tables"):
            for rule in self.rules(tool, "DOCKER-USER" if tool == "iptables" else "FORWARD"):
                lines.append(shlex.join([tool, "-w", *rule]))
        return lines

    # -- install / remove ---------------------------------------------------------------------------

    def install(self) -> None:
        """Install the rules for IPv4 and IPv6, replacing any of ours left from before."""
        for tool in ("iptables", "ip6tables"):
            self._check(tool)
            self._remove(tool)
            forward = "DOCKER-USER" if tool == "iptables" and self._has_chain(tool, "DOCKER-USER") else "FORWARD"
            for rule in self.rules(tool, forward):
                self._run(tool, rule)
        log.info("packet filter installed: chain %s (instances on %s, ports %s)", self.chain, self.bridge, self.ports)

    def remove(self) -> None:
        """Remove every rule tagged as ours and our chain, for IPv4 and IPv6; quiet when there are none."""
        for tool in ("iptables", "ip6tables"):
            if shutil.which(tool):
                try:
                    self._remove(tool)
                except FirewallUnavailable as e:
                    log.warning("could not remove packet filter rules: %s", e)

    def installed(self, tool: str = "iptables") -> list[str]:
        """Our rules as `tool -S` prints them (for tests and `status`)."""
        return [line for chain in ("INPUT", "FORWARD", "DOCKER-USER", self.chain)
                if self._has_chain(tool, chain)
                for line in self._run(tool, ["-S", chain]).splitlines() if self.tag in line]

    def _remove(self, tool: str) -> None:
        for chain in ("INPUT", "FORWARD", "DOCKER-USER"):
            if not self._has_chain(tool, chain):
                continue
            for line in self._run(tool, ["-S", chain]).splitlines():
                if self.tag in line and line.startswith("-A "):
                    self._run(tool, ["-D", *shlex.split(line[3:])])
        if self._has_chain(tool, self.chain):
            self._run(tool, ["-F", self.chain])
            self._run(tool, ["-X", self.chain])

    def _check(self, tool: str) -> None:
        if shutil.which(tool) is None:
            raise FirewallUnavailable(f"{tool} is not installed")
        self._run(tool, ["-S", "INPUT"])

    def _has_chain(self, tool: str, chain: str) -> bool:
        return subprocess.run([tool, "-w", "-n", "-L", chain], capture_output=True).returncode == 0

    def _run(self, tool: str, args: Sequence[str]) -> str:
        try:
            done = subprocess.run([tool, "-w", *args], capture_output=True, text=True)
        except OSError as e:
            raise FirewallUnavailable(f"cannot run {tool}: {e}") from e
        if done.returncode != 0:
            raise FirewallUnavailable(f"{tool} {' '.join(args)}: {done.stderr.strip() or done.returncode}")
        return done.stdout

