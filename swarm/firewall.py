"""Packet filter rules that close a namespace's instances in: nothing reaches them but the gateway, and they reach
nothing but, for apps allowed it, the public internet (iptables and ip6tables).

Published instances join one of the namespace's two bridges (see `networks.Bridges.ensure`), whose ports bind
127.0.0.1 and whose containers cannot talk to each other: `sp<namespace>.<generation>` for apps with
egress "none", `sp<namespace>-<generation>` for egress "internet". The interface name says the class, so
the rules never change per instance and hold from a container's first packet. Two chains of our own,
jumped to from Docker's chains and tagged so they are removed by tag:

- forwarded traffic (`SWARMPOOL-<NS>`, from `DOCKER-USER`): no new connection into an instance, from any
  interface or container (a LAN host that reaches a DNAT'd port, another instance, a container on another
  bridge); none out of a closed instance at all (so its DNS, which Docker's embedded server forwards from
  the instance's own network namespace, answers no outside name); out of an internet instance none to
  private, shared, link-local, loopback, documentation, multicast or reserved ranges, nor to the networks
  the host's own interfaces are on (the LAN), except DNS to the resolvers the instances' DNS forwards to;
- traffic to the host (`SWARMPOOL-<NS>-IN`, from `INPUT`): no new connection or datagram from an instance
  to the host, whatever port or address (the bridge gateway, the LAN address; swarm ports, NATS, the
  gateway's listener, metrics, the dashboard);
- IPv6 (Docker's IPv6 is off unless configured): the same, plus no new TCP connection from any interface
  but loopback to the published port range, in case a proxy listens on `::`.

Refusals out of an instance are REJECTs (the student's code fails at once, not after a timeout), drops
into an instance are DROPs. The gateway and the prober on the host reach instances at 127.0.0.1:<port>
(docker-proxy, local traffic, its replies ESTABLISHED), which none of these rules touch.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import shlex
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from swarmpool.swarm.model import EGRESS_INTERNET, EGRESS_NONE
from swarmpool.swarm.names import bridge_name

log = logging.getLogger(__name__)

_PORT_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # Docker allocates published ports from it
_DEFAULT_PORT_RANGE = (32768, 60999)
_RESOLV_CONF = Path("/etc/resolv.conf")
_RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")  # what Docker reads when the host uses resolved
# never reachable from an instance, whatever its egress: RFC 6890 special-purpose and private ranges
PRIVATE_IPV4 = ("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
                "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
                "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4")
# never reachable from an internet instance either: cloud platforms' host services (Azure's wire server and
# DNS, whose metadata endpoint 169.254.169.254 is in the link-local range above); DNS to one that is the
# configured resolver passes by the resolver rule before these
PLATFORM_IPV4 = ("168.63.129.16/32",)
PRIVATE_IPV6 = ("::/127", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001:db8::/32",
                "2002::/16", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8")
_TOOLS = ("iptables", "ip6tables")


def _temporary(chain: str) -> str:
    """The name a chain is built under while its old copy still filters (as long: at most 28 characters)."""
    return "SWARMPNEW" + chain[len("SWARMPOOL"):]


class FirewallUnavailable(Exception):
    """iptables is missing or this process may not change the rules; the message says what to run."""


def published_port_range() -> tuple[int, int]:
    """The range the engine picks published ports from (the kernel's ephemeral range)."""
    try:
        low, high = _PORT_RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _DEFAULT_PORT_RANGE


def host_resolvers() -> list[str]:
    """The DNS servers Docker's embedded DNS forwards to by default: the host's, loopback ones left out (with
    systemd-resolved's stub only, the upstream servers resolved uses)."""
    found = _name_servers(_RESOLV_CONF)
    if found and all(ipaddress.ip_address(a).is_loopback for a in found):
        found = _name_servers(_RESOLVED_UPSTREAM)
    return [a for a in found if not ipaddress.ip_address(a).is_loopback]


def _name_servers(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            try:
                found.append(str(ipaddress.ip_address(parts[1].split("%")[0])))
            except ValueError:
                continue
    return found


def host_networks() -> list[str]:
    """The networks the host's own interfaces are on (its LAN), as `ip` lists them: global addresses only."""
    try:
        done = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            raise ValueError(done.stderr.strip() or f"exit {done.returncode}")
        links = json.loads(done.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        log.warning("cannot list the host's networks with `ip -j addr show` (%s): internet instances are kept "
                    "only from the private ranges, not from this host's own public networks", e)
        return []
    networks = []
    for link in links:
        for info in link.get("addr_info") or []:
            if info.get("scope") == "global" and info.get("local") and info.get("prefixlen") is not None:
                try:
                    networks.append(str(ipaddress.ip_interface(f"{info['local']}/{info['prefixlen']}").network))
                except ValueError:
                    continue
    return networks


def denied_networks(tool: str, lan: Sequence[str]) -> list[str]:
    """What an internet instance may never reach over `tool`'s IP version: the special ranges, then the LAN
    networks that none of them already covers."""
    version = 4 if tool == "iptables" else 6
    ranges = [ipaddress.ip_network(r) for r in ((*PRIVATE_IPV4, *PLATFORM_IPV4) if version == 4 else PRIVATE_IPV6)]
    extra: list[str] = []
    for text in lan:
        network = ipaddress.ip_network(text, strict=False)
        if network.version != version or any(network.subnet_of(r) for r in ranges  # type: ignore[arg-type]
                                             if r.version == version):
            continue
        if str(network) not in extra:
            extra.append(str(network))
    return [str(r) for r in ranges] + extra


class Firewall:
    """The filter rules of one namespace: `install()` at start (idempotent), `remove()` at stop."""

    def __init__(self, namespace: str, port_range: tuple[int, int] | None = None,
                 resolvers: Sequence[str] | None = None, lan: Sequence[str] | None = None) -> None:
        self.namespace = namespace
        self.closed = bridge_name(namespace, egress=EGRESS_NONE)  # every generation's interface
        self.internet = bridge_name(namespace, egress=EGRESS_INTERNET)
        self.chain = f"SWARMPOOL-{namespace.upper()}"  # forwarded traffic
        self.input_chain = f"{self.chain}-IN"  # traffic to the host
        self.reject_chain = f"{self.chain}-REJECT"  # how a refusal is answered (at most 28 characters)
        self.tag = f"swarmpool:{namespace}"
        low, high = port_range or published_port_range()
        self.ports = f"{low}:{high}"
        # the DNS servers internet instances' DNS forwards to (settings.egress_dns, else the host's)
        self.resolvers = [str(ipaddress.ip_address(r)) for r in (host_resolvers() if resolvers is None else resolvers)]
        self.lan = list(host_networks() if lan is None else lan)

    # -- the rules, as argument lists ---------------------------------------------------------------

    def rules(self, tool: str, forward_chain: str) -> list[list[str]]:
        """The commands (without the tool's name) that install the rules for `tool` (iptables or ip6tables)."""
        tag = ["-m", "comment", "--comment", self.tag]
        new = ["-m", "conntrack", "--ctstate", "NEW"]
        opening = ["-m", "conntrack", "!", "--ctstate", "ESTABLISHED,RELATED"]  # new, invalid or untracked
        reject = ["-j", self.reject_chain]
        version = 4 if tool == "iptables" else 6
        chain, into, refuse = self.chain, self.input_chain, self.reject_chain
        rules = [
            # a refusal the student's code sees at once: a reset for TCP (not rate-limited as ICMP is)
            ["-N", refuse],
            ["-A", refuse, "-p", "tcp", *tag, "-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-A", refuse, *tag, "-j", "REJECT"],
            ["-N", chain],
            # out of a closed instance: nothing (its DNS forwards from inside it, so it ends here too)
            ["-A", chain, "-i", self.closed, *opening, *tag, *reject],
            # from an internet instance to another instance: nothing
            ["-A", chain, "-i", self.internet, "-o", self.closed, *opening, *tag, *reject],
            ["-A", chain, "-i", self.internet, "-o", self.internet, *opening, *tag, *reject],
            # into an instance from anywhere else (another machine, another container): nothing new
            ["-A", chain, "-o", self.closed, *opening, *tag, "-j", "DROP"],
            ["-A", chain, "-o", self.internet, *opening, *tag, "-j", "DROP"],
        ]
        for resolver in (r for r in self.resolvers if ipaddress.ip_address(r).version == version):
            for protocol in ("udp", "tcp"):
                rules.append(["-A", chain, "-i", self.internet, "-d", resolver, "-p", protocol, "--dport", "53",
                              *new, *tag, "-j", "RETURN"])
        for network in denied_networks(tool, self.lan):
            rules.append(["-A", chain, "-i", self.internet, "-d", network, *opening, *tag, *reject])
        rules.append(["-A", chain, *tag, "-j", "RETURN"])
        rules += [
            ["-N", into],
            # to the host, any address and port: nothing new from an instance
            ["-A", into, "-i", self.closed, *opening, *tag, *reject],
            ["-A", into, "-i", self.internet, *opening, *tag, *reject],
        ]
        if tool == "ip6tables":
            rules.append(["-A", into, "!", "-i", "lo", "-p", "tcp", "--dport", self.ports, *opening, *tag, "-j", "DROP"])
        rules.append(["-A", into, *tag, "-j", "RETURN"])
        rules.append(["-I", forward_chain, "1", *tag, "-j", chain])
        rules.append(["-I", "INPUT", "1", *tag, "-j", into])
        return rules

    def commands(self) -> list[str]:
        """The shell commands an administrator runs to install the rules by hand."""
        lines = []
        for tool in _TOOLS:
            for rule in self.rules(tool, "DOCKER-USER" if tool == "iptables" else "FORWARD"):
                lines.append(shlex.join([tool, "-w", *rule]))
        return lines

    # -- install / remove ---------------------------------------------------------------------------

    def install(self) -> None:
        """Install the rules for IPv4 and IPv6, replacing any of ours left from before without a moment
        unfiltered: the new chains are built under temporary names and jumped to first, then the old ones go,
        then the new ones take the usual names (a jump follows its chain's rename)."""
        for tool in _TOOLS:
            self._check(tool)
            # Docker's own hook where it has one (for IPv6 too, when its ip6tables is on): it jumps there first
            forward = "DOCKER-USER" if self._has_chain(tool, "DOCKER-USER") else "FORWARD"
            for name in self._names:  # an install interrupted after the old chains went: its new ones are the rules
                if not self._has_chain(tool, name) and self._has_chain(tool, _temporary(name)):
                    self._run(tool, ["-E", _temporary(name), name])
            temporary = {name: _temporary(name) for name in self._names}
            self._remove(tool, temporary.values())  # what an install interrupted earlier left
            for rule in self.rules(tool, forward):
                self._run(tool, [temporary.get(word, word) for word in rule])
            self._remove(tool, self._names)  # the old rules, now behind the new ones
            for name in self._names:
                self._run(tool, ["-E", temporary[name], name])
        log.info("packet filter installed: chains %s and %s (instances on %s and %s, resolvers %s)", self.chain,
                 self.input_chain, self.closed, self.internet, ", ".join(self.resolvers) or "none")

    def remove(self) -> None:
        """Remove every rule tagged as ours and our chain, for IPv4 and IPv6; quiet when there are none."""
        for tool in _TOOLS:
            if shutil.which(tool):
                try:
                    self._remove(tool, [*self._names, *map(_temporary, self._names)])
                except FirewallUnavailable as e:
                    log.warning("could not remove packet filter rules: %s", e)

    def verified(self) -> bool:
        """Whether all our rules are in place for IPv4 and IPv6, as `commands()` installs them (an administrator
        ran them); False when they cannot be read (reading needs the same rights as installing)."""
        try:
            for tool in _TOOLS:
                if shutil.which(tool) is None:
                    return False
                wanted = [r for r in self.rules(tool, "FORWARD") if r[0] in ("-A", "-I")]
                found = self.installed(tool)
                jumps = {(words[1], words[-1]) for words in (line.split() for line in found) if words[0] == "-A"}
                into = ("INPUT", self.input_chain) in jumps
                forward = ("FORWARD", self.chain) in jumps or ("DOCKER-USER", self.chain) in jumps
                if len(found) != len(wanted) or not (into and forward):
                    return False
        except FirewallUnavailable:
            return False
        return True

    def installed(self, tool: str = "iptables") -> list[str]:
        """Our rules as `tool -S` prints them (for tests and `status`)."""
        return [line for chain in ("INPUT", "FORWARD", "DOCKER-USER", self.chain, self.input_chain, self.reject_chain)
                if self._has_chain(tool, chain)
                for line in self._run(tool, ["-S", chain]).splitlines() if self.ours(line)]

    def ours(self, line: str) -> bool:
        """Whether a rule as `-S` prints it carries exactly our tag (`swarmpool:sp` is not `swarmpool:sp2`'s)."""
        try:
            words = shlex.split(line)
        except ValueError:
            return False
        return any(word == "--comment" and value == self.tag for word, value in zip(words, words[1:]))

    @property
    def _names(self) -> tuple[str, str, str]:
        return self.chain, self.input_chain, self.reject_chain  # the last is referenced by the others

    def _remove(self, tool: str, chains: Iterable[str]) -> None:
        """Remove our jumps to `chains`, then the chains themselves."""
        chains = list(chains)
        for chain in ("INPUT", "FORWARD", "DOCKER-USER"):
            if not self._has_chain(tool, chain):
                continue
            for line in self._run(tool, ["-S", chain]).splitlines():
                if line.startswith("-A ") and self.ours(line) and line.split()[-1] in chains:
                    self._run(tool, ["-D", *shlex.split(line[3:])])
        for chain in chains:
            if self._has_chain(tool, chain):
                self._run(tool, ["-F", chain])
        for chain in chains:
            if self._has_chain(tool, chain):
                self._run(tool, ["-X", chain])

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

