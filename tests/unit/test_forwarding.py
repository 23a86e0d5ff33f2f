"""The proxy's pure helpers: which forwarding headers are believed, what path the instance sees."""

from __future__ import annotations

from multidict import CIMultiDict

from swarmpool.gateway.proxy import forwarding, trusted_peer, upstream_path, without_hop_by_hop
from swarmpool.ids import instance_prefix


def test_forwarding_headers_are_trusted_only_from_loopback() -> None:
    client = CIMultiDict({"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"})
    out = forwarding(client, remote="203.0.113.9", scheme="http", host="gw:8080", prefix=None)
    assert out["X-Forwarded-For"] == "203.0.113.9"
    assert out["X-Forwarded-Proto"] == "http" and out["X-Forwarded-Host"] == "gw:8080"
    assert "X-Forwarded-Prefix" not in out
    nginx = CIMultiDict({"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https",
                         "X-Forwarded-Host": "class.example.org"})
    out = forwarding(nginx, remote="127.0.0.1", scheme="http", host="gw:8080", prefix="/i/abc")
    assert out["X-Forwarded-For"] == "198.51.100.7, 127.0.0.1"
    assert out["X-Forwarded-Proto"] == "https" and out["X-Forwarded-Host"] == "class.example.org"
    assert out["X-Forwarded-Prefix"] == "/i/abc"
    assert trusted_peer("::1") and not trusted_peer("10.0.0.1") and not trusted_peer("garbage")


def test_a_unix_socket_peer_is_trusted() -> None:
    out = forwarding(CIMultiDict({"X-Real-IP": "198.51.100.7"}), remote=None, scheme="http", host="gw",
                     prefix=None)
    assert out["X-Forwarded-For"] == "198.51.100.7, unix"
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
