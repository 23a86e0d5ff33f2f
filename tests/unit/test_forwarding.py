"""The proxy's pure helpers: which forwarding headers are believed, what path the instance sees."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from swarmpool.gateway.origin import DEFAULT_TRUSTED_PROXIES, client_address
from swarmpool.gateway.proxy import forwarding, trusted_peer, upstream_path, without_hop_by_hop
from swarmpool.ids import instance_prefix


def test_forwarding_headers_are_set_from_the_connection_unless_a_trusted_proxy_sent_them() -> None:
    client = CIMultiDict({"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil",
                          "X-Real-IP": "6.6.6.6"})
    out = forwarding(client, remote="203.0.113.9", scheme="http", host="gw:8080", prefix=None)
    assert out["X-Forwarded-For"] == "203.0.113.9" and out["X-Real-IP"] == "203.0.113.9"
    assert out["X-Forwarded-Proto"] == "http" and out["X-Forwarded-Host"] == "gw:8080"
    assert "X-Forwarded-Prefix" not in out
    nginx = CIMultiDict({"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https",
                         "X-Forwarded-Host": "class.example.org"})
    out = forwarding(nginx, remote="127.0.0.1", scheme="http", host="class.example.org", prefix="/i/abc")
    assert out["X-Forwarded-For"] == "198.51.100.7" and out["X-Real-IP"] == "198.51.100.7"
    assert out["X-Forwarded-Proto"] == "https" and out["X-Forwarded-Host"] == "class.example.org"
    assert out["X-Forwarded-Prefix"] == "/i/abc"
    # even a trusted proxy cannot make the instance see another host than the gateway's Host
    assert forwarding(CIMultiDict({"X-Forwarded-Host": "evil"}), remote="127.0.0.1", scheme="http",
                      host="class.example.org", prefix=None)["X-Forwarded-Host"] == "class.example.org"
    # a proto that is not http or https is not believed
    assert forwarding(CIMultiDict({"X-Forwarded-Proto": "javascript"}), remote="127.0.0.1", scheme="http",
                      host="h", prefix=None)["X-Forwarded-Proto"] == "http"
    # no trusted proxies at all: loopback is a client like any other
    out = forwarding(client, remote="127.0.0.1", scheme="http", host="gw", prefix=None, proxies=())
    assert out["X-Forwarded-For"] == "127.0.0.1" and out["X-Forwarded-Proto"] == "http"


@pytest.mark.parametrize(("chain", "remote", "proxies", "expected"), [
    ([], "203.0.113.9", DEFAULT_TRUSTED_PROXIES, "203.0.113.9"),  # no proxy: the connection
    (["6.6.6.6"], "203.0.113.9", DEFAULT_TRUSTED_PROXIES, "203.0.113.9"),  # a client's own: ignored
    (["198.51.100.7"], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "198.51.100.7"),  # nginx on loopback
    (["6.6.6.6, 198.51.100.7"], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "198.51.100.7"),  # appended: right-most
    (["6.6.6.6", "198.51.100.7"], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "198.51.100.7"),  # two header lines
    (["198.51.100.7, 10.1.0.5"], "127.0.0.1", ("127.0.0.1", "10.1.0.0/16"), "198.51.100.7"),  # proxy chain
    (["127.0.0.1"], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "127.0.0.1"),  # a client on the proxy's host
    (["not-an-address"], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "127.0.0.1"),  # garbage: the connection
    ([], "127.0.0.1", DEFAULT_TRUSTED_PROXIES, "127.0.0.1"),  # straight to the gateway from loopback
    (["198.51.100.7"], "::ffff:127.0.0.1", DEFAULT_TRUSTED_PROXIES, "198.51.100.7"),  # v4-mapped loopback
    (["198.51.100.7"], "10.1.0.9", ("10.1.0.0/16",), "198.51.100.7"),  # a front on another host, configured
    (["198.51.100.7"], "10.1.0.9", DEFAULT_TRUSTED_PROXIES, "10.1.0.9"),  # ... and not configured
    (["198.51.100.7"], None, DEFAULT_TRUSTED_PROXIES, "198.51.100.7"),  # a unix socket is the proxy's own
])
def test_client_address(chain: list[str], remote: str | None, proxies: tuple[str, ...], expected: str) -> None:
    assert client_address(chain, remote, proxies) == expected


def test_trusted_peer() -> None:
    assert trusted_peer("::1") and trusted_peer("127.8.0.1") and trusted_peer(None)
    assert not trusted_peer("10.0.0.1") and not trusted_peer("garbage")
    assert not trusted_peer("127.0.0.1", ()) and trusted_peer("10.0.0.1", ("10.0.0.0/8",))


def test_a_unix_socket_peer_is_trusted() -> None:
    out = forwarding(CIMultiDict({"X-Forwarded-For": "198.51.100.7"}), remote=None, scheme="http", host="gw",
                     prefix=None)
    assert out["X-Forwarded-For"] == "198.51.100.7"
    assert out["X-Real-IP"] == "198.51.100.7"


def test_upstream_path() -> None:
    iid = "a" * 26
    prefix = instance_prefix(iid)
    assert upstream_path(f"{prefix}x/y", iid, strip_prefix=False) == f"/i/{iid}/x/y"
    assert upstream_path(f"{prefix}x/y", iid, strip_prefix=True) == "/x/y"
    assert upstream_path(prefix, iid, strip_prefix=True) == "/"
    assert upstream_path(f"{prefix}x%20y", iid, strip_prefix=True) == "/x%20y"


def test_hop_by_hop_headers_are_dropped_with_those_connection_names() -> None:
    headers = without_hop_by_hop({"Connection": "keep-alive, X-Drop", "X-Drop": "1", "Keep-Alive": "5",
                                  "Upgrade": "websocket", "X-Custom": "kept"})
    assert dict(headers) == {"X-Custom": "kept"}


def test_a_repeated_peer_and_chain_are_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import ipaddress

    from swarmpool.gateway import origin

    parsed: list[str] = []
    real = ipaddress.ip_address

    def counting(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        parsed.append(address)
        return real(address)

    nginx = CIMultiDict({"X-Forwarded-For": "198.51.100.77", "X-Forwarded-Proto": "https"})
    proxies = ("127.0.0.0/8", "10.9.8.0/24")  # a tuple not used by another test: nothing cached yet
    monkeypatch.setattr(origin.ipaddress, "ip_address", counting)
    first = forwarding(nginx, remote="127.0.0.9", scheme="http", host="h", prefix=None, proxies=proxies)
    assert parsed  # the first request from this front parses its addresses
    parsed.clear()
    again = forwarding(nginx, remote="127.0.0.9", scheme="http", host="h", prefix=None, proxies=proxies)
    assert parsed == [] and again == first  # every later one: from the cache, the same answer
    assert again["X-Forwarded-For"] == "198.51.100.77" and again["X-Forwarded-Proto"] == "https"
