"""What instances may reach is decided by the catalogue (egress per app, the resolvers) and enforced by rules
keyed by bridge name; the rules an administrator pastes from the docs are the ones `up` installs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from swarmpool.catalogue import CatalogueError, parse
from swarmpool.functions.lifecycle import instance_spec
from swarmpool.functions.policy import spec_version
from swarmpool.swarm import firewall
from swarmpool.swarm.model import EGRESS_INTERNET, EGRESS_NONE
from swarmpool.swarm.names import bridge_name, instance_network_name
from swarmpool.swarm.firewall import Firewall, denied_networks, host_resolvers

ROOT = Path(__file__).resolve().parents[2]
APP = """
[apps.echo]
image = "swarmpool/echo:latest"
port = 8888
"""


def test_the_commands_in_the_docs_are_the_ones_the_filter_installs() -> None:
    text = (ROOT / "docs" / "security-network.md").read_text()
    found = re.search(r"<!-- firewall-commands: (.*?) -->\n```sh\n(.*?)```\n<!-- /firewall-commands -->", text, re.S)
    assert found, "the marked block of commands is missing from docs/security-network.md"
    assert found.group(1) == 'Firewall("sp", port_range=(32768, 60999), resolvers=["192.168.1.1"], lan=[])'
    wall = Firewall("sp", port_range=(32768, 60999), resolvers=["192.168.1.1"], lan=[])
    assert found.group(2).splitlines() == wall.commands()


def test_the_bridges_of_the_two_classes_and_their_filter_patterns_never_overlap() -> None:
    closed, open_ = bridge_name("sp", "0", EGRESS_NONE), bridge_name("sp", "0", EGRESS_INTERNET)
    assert (closed, open_) == ("spsp.0", "spsp-0")
    assert bridge_name("sp", egress=EGRESS_NONE) == "spsp.+" and bridge_name("sp", egress=EGRESS_INTERNET) == "spsp-+"
    assert len(bridge_name("a" * 11, "z", EGRESS_INTERNET)) <= 15  # a Linux interface name
    assert instance_network_name("sp") == "sp-instances"  # the closed class keeps the bridge it always had
    assert instance_network_name("sp", "1", EGRESS_INTERNET) == "sp-internet-1"
    wall = Firewall("a" * 11, port_range=(1, 2), resolvers=[], lan=[])
    assert max(len(c) for c in (wall.chain, wall.input_chain, wall.reject_chain)) <= 28  # iptables' limit


def _rules(wall: Firewall, tool: str = "iptables") -> list[str]:
    return [" ".join(r) for r in wall.rules(tool, "DOCKER-USER" if tool == "iptables" else "FORWARD")]


def test_closed_instances_get_out_nowhere_and_internet_ones_only_to_public_addresses() -> None:
    wall = Firewall("sp", port_range=(32768, 60999), resolvers=["10.1.2.3", "fd00::53"], lan=["198.51.99.0/24"])
    rules = _rules(wall)
    forward = [r for r in rules if r.startswith("-A SWARMPOOL-SP ")]
    # the first rule sends everything a closed instance opens to the refusal, whatever its destination
    assert re.match(r"-A SWARMPOOL-SP -i spsp\.\+ -m conntrack ! --ctstate ESTABLISHED,RELATED .* -j "
                    r"SWARMPOOL-SP-REJECT$", forward[0])
    # an internet instance: DNS to the resolvers, before the private ranges (the resolver is in 10/8)...
    dns = [i for i, r in enumerate(forward) if "--dport 53" in r]
    private = [i for i, r in enumerate(forward) if "-i spsp-+ -d " in r and "REJECT" in r]
    assert len(dns) == 2 and max(dns) < min(private)
    assert all("-d 10.1.2.3" in forward[i] and forward[i].endswith("-j RETURN") for i in dns)
    # ...then no private, special or host network
    refused = {forward[i].split(" -d ")[1].split()[0] for i in private}
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "127.0.0.0/8",
            "198.51.99.0/24", "168.63.129.16/32"} <= refused  # the last: a cloud's host services (Azure)
    # nothing between instances, nothing new into them
    assert any(r.startswith("-A SWARMPOOL-SP -i spsp-+ -o spsp.+ ") for r in forward)
    assert any(r.startswith("-A SWARMPOOL-SP -i spsp-+ -o spsp-+ ") for r in forward)
    # (not only NEW: an invalid or untracked packet opens nothing either)
    assert any(r.startswith("-A SWARMPOOL-SP -o spsp.+ -m conntrack ! --ctstate ESTABLISHED,RELATED ")
               and r.endswith("DROP") for r in forward)
    assert any(r.startswith("-A SWARMPOOL-SP -o spsp-+ -m conntrack ! --ctstate ESTABLISHED,RELATED ")
               and r.endswith("DROP") for r in forward)
    assert not any("--ctstate NEW" in r and r.endswith("DROP") for r in rules)
    # to the host: nothing, any port
    to_host = [r for r in rules if r.startswith("-A SWARMPOOL-SP-IN ")]
    assert [r.split()[3] for r in to_host if "REJECT" in r] == ["spsp.+", "spsp-+"]
    assert not any("--dport" in r for r in to_host)
    assert rules[-2:] == ["-I DOCKER-USER 1 -m comment --comment swarmpool:sp -j SWARMPOOL-SP",
                          "-I INPUT 1 -m comment --comment swarmpool:sp -j SWARMPOOL-SP-IN"]
    six = _rules(wall, "ip6tables")
    assert any("-d fd00::53" in r for r in six) and not any("10.1.2.3" in r for r in six)
    assert any("-d fc00::/7" in r for r in six) and any("! -i lo -p tcp --dport 32768:60999" in r for r in six)


def test_host_networks_already_covered_are_not_repeated() -> None:
    found = denied_networks("iptables", ["192.168.1.0/24", "198.51.99.0/24", "198.51.99.7/24", "2001:db9::/64"])
    assert found.count("198.51.99.0/24") == 1 and "192.168.1.0/24" not in found and "2001:db9::/64" not in found
    assert "2001:db9::/64" in denied_networks("ip6tables", ["2001:db9::/64", "fd00::/64"])


def test_the_default_resolvers_are_docker_s_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf, upstream = tmp_path / "resolv.conf", tmp_path / "upstream.conf"
    monkeypatch.setattr(firewall, "_RESOLV_CONF", conf)
    monkeypatch.setattr(firewall, "_RESOLVED_UPSTREAM", upstream)
    conf.write_text("# generated\nnameserver 192.0.2.53\nnameserver 127.0.0.1\nsearch lan\nnameserver fe80::1%eth0\n")
    assert host_resolvers() == ["192.0.2.53", "fe80::1"]
    conf.write_text("nameserver 127.0.0.53\noptions edns0\n")  # systemd-resolved's stub: Docker reads upstream
    upstream.write_text("nameserver 10.0.0.1\n")
    assert host_resolvers() == ["10.0.0.1"]


def test_egress_is_closed_unless_the_catalogue_opens_it() -> None:
    catalogue = parse(APP + "\n[apps.open]\nimage = \"x\"\nport = 1\negress = \"internet\"\n"
                      "\n[settings]\negress_dns = [\"9.9.9.9\", \"2620:fe::fe\"]\n")
    closed, open_ = catalogue.apps["echo"], catalogue.apps["open"]
    assert closed.egress == "none" and open_.egress == "internet"
    spec = instance_spec(open_, "a" * 26, catalogue.settings)
    assert spec.egress == EGRESS_INTERNET and spec.dns == ["9.9.9.9", "2620:fe::fe"]
    assert instance_spec(closed, "a" * 26, catalogue.settings).egress == EGRESS_NONE
    # opening an app recycles its warm instances; apps that stay closed keep their spec version
    assert spec_version(open_) != spec_version(parse(APP.replace("echo", "open").replace(
        '"swarmpool/echo:latest"', '"x"').replace("8888", "1")).apps["open"])


@pytest.mark.parametrize("text, field, words", [
    (APP + 'egress = "all"\n', "apps.echo.egress", "Invalid enum value 'all'"),
    (APP + '[settings]\negress_dns = ["dns.example"]\n', "settings.egress_dns[0]", "IP address"),
])
def test_a_wrong_egress_names_its_field(text: str, field: str, words: str) -> None:
    with pytest.raises(CatalogueError) as err:
        parse(text, "classroom.toml")
    assert err.value.field == field
    assert words in err.value.problem


def _compose(tmp_path: Path, catalogue: str = APP, **kw: object) -> dict:  # type: ignore[type-arg]
    from swarmpool.deploy import Options, Tls, write_files

    options = Options(image="swarmpool/control:test", **kw)  # type: ignore[arg-type]
    compose_file, _ = write_files(options, tmp_path, "cat.toml", catalogue, Tls(), None)
    return json.loads(compose_file.read_text())  # type: ignore[no-any-return]


def test_on_a_cluster_instances_join_an_internal_overlay_the_gateway_does_not_listen_on(tmp_path: Path) -> None:
    spec = _compose(tmp_path)
    assert spec["networks"]["instances"]["internal"] is True  # no docker_gwbridge: no route off the overlay
    assert "internal" not in spec["networks"]["control"]  # NATS, gateways and function hosts keep theirs
    gateway = spec["services"]["gateway"]["command"]
    assert gateway[gateway.index("--host") + 1] == "default-route"  # its node's port, not the overlay
    assert all("driver_opts" not in n for n in spec["networks"].values())
    encrypted = _compose(tmp_path / "enc", encrypt_overlays=True)
    assert all(n["driver_opts"] == {"encrypted": ""} for n in encrypted["networks"].values())


def test_a_cluster_refuses_egress_it_cannot_give(tmp_path: Path) -> None:
    from swarmpool.deploy import DeployError

    with pytest.raises(DeployError, match=r"apps\.echo\.egress = 'internet' is not available on a cluster"):
        _compose(tmp_path, APP + 'egress = "internet"\n')


def test_the_gateway_finds_the_address_of_its_default_route(tmp_path: Path) -> None:
    from swarmpool.launcher import Unavailable, default_route_address

    routes = tmp_path / "route"
    routes.write_text("Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"
                      "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n")
    with pytest.raises(Unavailable, match="no default route"):
        default_route_address(routes)
    routes.write_text(routes.read_text() + "lo\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\n")
    assert default_route_address(routes) == "127.0.0.1"  # the address of the interface holding it


class _FakeTables:
    """The chains of a host where namespaces `sp` and `sp2` both have their filter, as `iptables -S` prints them."""

    def __init__(self) -> None:
        self.chains = {
            "INPUT": ["-P INPUT ACCEPT",
                      "-A INPUT -m comment --comment swarmpool:sp2 -j SWARMPOOL-SP2-IN",
                      "-A INPUT -m comment --comment swarmpool:sp -j SWARMPOOL-SP-IN"],
            "DOCKER-USER": ["-N DOCKER-USER",
                            "-A DOCKER-USER -m comment --comment swarmpool:sp2 -j SWARMPOOL-SP2",
                            '-A DOCKER-USER -m comment --comment "swarmpool:sp" -j SWARMPOOL-SP'],
            "SWARMPOOL-SP": ["-N SWARMPOOL-SP"], "SWARMPOOL-SP-IN": ["-N SWARMPOOL-SP-IN"],
            "SWARMPOOL-SP-REJECT": ["-N SWARMPOOL-SP-REJECT"],
        }
        self.deleted: list[list[str]] = []

    def run(self, tool: str, args: list[str]) -> str:
        if args[0] == "-S":
            return "\n".join(self.chains[args[1]]) + "\n"
        if args[0] == "-D":
            self.deleted.append(args[1:])
        return ""


def test_a_namespace_removes_only_the_rules_tagged_exactly_with_its_own_name(
        monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _FakeTables()
    wall = Firewall("sp", port_range=(1, 2), resolvers=[], lan=[])
    monkeypatch.setattr(wall, "_run", tables.run)
    monkeypatch.setattr(wall, "_has_chain", lambda tool, chain: chain in tables.chains)
    wall._remove("iptables", ("SWARMPOOL-SP", "SWARMPOOL-SP-IN", "SWARMPOOL-SP-REJECT"))
    assert tables.deleted == [["INPUT", "-m", "comment", "--comment", "swarmpool:sp", "-j", "SWARMPOOL-SP-IN"],
                              ["DOCKER-USER", "-m", "comment", "--comment", "swarmpool:sp", "-j", "SWARMPOOL-SP"]]
    assert wall.ours("-A X -m comment --comment swarmpool:sp -j Y")
    assert not wall.ours("-A X -m comment --comment swarmpool:sp2 -j Y")
    assert not wall.ours("-A X -m comment --comment swarmpool:sp:x -j Y")


def test_up_refuses_to_start_instances_unfiltered_unless_told_or_the_rules_are_in_place(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio
    from contextlib import AsyncExitStack

    from swarmpool.bus.spec import Settings
    from swarmpool.launcher import Unavailable, packet_filter

    monkeypatch.setenv("PATH", "/nonexistent")  # no iptables: nothing can be installed or read

    async def start(unfiltered: bool) -> None:
        async with AsyncExitStack() as stack:
            await packet_filter(stack, "nofw", Settings(), unfiltered=unfiltered)

    with pytest.raises(Unavailable) as err:
        asyncio.run(start(unfiltered=False))
    assert "instances would NOT be closed in" in str(err.value) and "iptables -w -I INPUT 1" in str(err.value)
    assert "--no-packet-filter" in str(err.value)
    asyncio.run(start(unfiltered=True))  # the operator's explicit, unsafe choice
    assert "WARNING: --no-packet-filter: instances are NOT closed in" in capsys.readouterr().out
    # an administrator ran the commands: this process may not install them, but they are there
    monkeypatch.setattr(Firewall, "verified", lambda self: True)
    asyncio.run(start(unfiltered=False))
    assert "an administrator's rules are in place" in capsys.readouterr().out


class _Tables:
    """iptables as a dict of chains (rules as `-S` prints them), each command logged: enough to follow the order
    in which `install()` changes them."""

    def __init__(self) -> None:
        self.chains: dict[str, list[str]] = {"INPUT": [], "FORWARD": [], "DOCKER-USER": []}
        self.log: list[list[str]] = []

    def run(self, tool: str, args: list[str]) -> str:
        if tool != "iptables":
            return ""
        verb, chain, rest = args[0], args[1] if len(args) > 1 else "", list(args[2:])
        self.log.append(list(args))
        if verb == "-S":
            return "".join(line + "\n" for line in self.chains[chain])
        if verb == "-N":
            self.chains[chain] = []
        elif verb == "-A":
            self.chains[chain].append(shlex.join(["-A", chain, *rest]))
        elif verb == "-I":
            self.chains[chain].insert(int(rest[0]) - 1, shlex.join(["-A", chain, *rest[1:]]))
        elif verb == "-D":
            self.chains[chain].remove(shlex.join(["-A", chain, *rest]))
        elif verb == "-F":
            self.chains[chain] = []
        elif verb == "-X":
            assert not any(line.split()[-1] == chain for lines in self.chains.values() for line in lines)
            del self.chains[chain]
        elif verb == "-E":
            self.chains[rest[0]] = [line.replace(f"-A {chain} ", f"-A {rest[0]} ", 1) for line in self.chains.pop(chain)]
            for name, lines in self.chains.items():
                self.chains[name] = [line[: -len(chain)] + rest[0] if line.split()[-1] == chain else line
                                     for line in lines]
        return ""

    def filtered(self) -> bool:
        """Whether INPUT and DOCKER-USER jump to a complete filter chain of ours (named as it may be)."""
        def complete(chain: str) -> bool:
            return chain in self.chains and self.chains[chain][-1].endswith("-j RETURN")
        return (any(complete(line.split()[-1]) for line in self.chains["INPUT"])
                and any(complete(line.split()[-1]) for line in self.chains["DOCKER-USER"]))


def test_reinstalling_the_filter_leaves_no_moment_unfiltered(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = _Tables()
    wall = Firewall("sp", port_range=(1, 2), resolvers=["192.168.1.1"], lan=[])
    monkeypatch.setattr(firewall.shutil, "which", lambda tool: "/usr/sbin/" + tool)
    monkeypatch.setattr(wall, "_has_chain", lambda tool, chain: tool == "ip6tables" or chain in tables.chains)
    monkeypatch.setattr(wall, "_check", lambda tool: None)
    monkeypatch.setattr(wall, "_run", tables.run)
    wall.install()  # `up` starts
    first = {name: list(lines) for name, lines in tables.chains.items()}
    assert tables.filtered() and "SWARMPOOL-SP" in first
    tables.log.clear()
    states = []
    original = tables.run

    def watched(tool: str, args: list[str]) -> str:
        out = original(tool, args)
        states.append(tables.filtered())
        return out

    monkeypatch.setattr(wall, "_run", watched)
    wall.install()  # after a crash, instances still running: filtered at every step
    assert all(states) and tables.chains == first
    assert any(args[0] == "-E" for args in tables.log)
    wall.remove()
    assert tables.chains == {"INPUT": [], "FORWARD": [], "DOCKER-USER": []}


def test_up_leaves_the_filter_of_a_namespace_another_copy_took_over(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    from contextlib import AsyncExitStack

    from swarmpool.bus.spec import Settings
    from swarmpool.launcher import Ownership, packet_filter

    removed: list[str] = []
    monkeypatch.setattr(Firewall, "install", lambda self: None)
    monkeypatch.setattr(Firewall, "remove", lambda self: removed.append(self.namespace))

    async def run(held: bool) -> None:
        owner = Ownership("me")
        async with AsyncExitStack() as stack:
            await packet_filter(stack, "sp", Settings(), owner=owner)
            owner.held = held  # the lease renewal found another holder

    asyncio.run(run(held=False))
    assert removed == []
    asyncio.run(run(held=True))
    assert removed == ["sp"]


def test_a_cloud_hosts_resolver_is_reached_on_port_53_only_when_it_is_the_configured_one() -> None:
    rules = _rules(Firewall("sp", port_range=(1, 2), resolvers=["168.63.129.16"], lan=[]))
    forward = [r for r in rules if r.startswith("-A SWARMPOOL-SP ")]
    dns = [i for i, r in enumerate(forward) if "-d 168.63.129.16 " in r and "--dport 53" in r]
    refused = [i for i, r in enumerate(forward) if "-d 168.63.129.16/32 " in r and r.endswith("-j SWARMPOOL-SP-REJECT")]
    assert len(dns) == 2 and len(refused) == 1 and max(dns) < refused[0]
    assert not any("168.63.129.16 " in r and "--dport 53" in r
                   for r in _rules(Firewall("sp", port_range=(1, 2), resolvers=["192.168.1.1"], lan=[])))


def test_without_ip_the_filter_says_the_host_networks_are_unknown(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    assert firewall.host_networks() == []
    assert "cannot list the host's networks" in caplog.text


def test_ipv6_forwarded_traffic_is_filtered_from_dockers_hook_when_it_has_one(monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list[tuple[str, list[str]]] = []
    wall = Firewall("sp", port_range=(1, 2), resolvers=[], lan=[])
    monkeypatch.setattr(wall, "_check", lambda tool: None)
    monkeypatch.setattr(wall, "_has_chain", lambda tool, chain: chain in ("INPUT", "FORWARD", "DOCKER-USER"))
    monkeypatch.setattr(wall, "_run", lambda tool, args: ran.append((tool, list(args))) or "")
    wall.install()
    jumps = [(tool, args[1]) for tool, args in ran if args[0] == "-I" and args[-1] == "SWARMPNEW-SP"]
    assert jumps == [("iptables", "DOCKER-USER"), ("ip6tables", "DOCKER-USER")]
