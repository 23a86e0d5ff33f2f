"""Lecture links (bus/links.py): tokens signed and verified, expiry, tampering, key rotation, the
budget's decision, and what the gateway's pages and logs keep of a token."""

from __future__ import annotations

import logging

import msgspec
import pytest

from swarmpool.bus.links import info, new_key, new_link_id, refusal, sign, verify
from swarmpool.bus.messages import Link, LinkKeys
from swarmpool.bus.spec import AppSpec
from swarmpool.gateway import pages
from swarmpool.gateway.app import SERVER_LOG

NOW = 1_800_000_000.0


def keys_of(*keys: object) -> LinkKeys:
    return LinkKeys(keys=list(keys))  # type: ignore[arg-type]


def test_a_signed_token_verifies_for_its_app_until_it_expires() -> None:
    key = new_key(NOW)
    link_id = new_link_id()
    token = sign(key, link_id, "echo", int(NOW + 3600))
    ok = verify(token, "echo", keys_of(key), NOW)
    assert (ok.check, ok.link_id, ok.kid) == ("ok", link_id, key.kid)
    assert verify(token, "echo", keys_of(key), NOW + 3599).check == "ok"
    assert verify(token, "echo", keys_of(key), NOW + 3600).check == "expired"
    assert verify(token, "echo", keys_of(key), NOW + 86400).link_id == link_id


def test_no_token_is_missing() -> None:
    assert verify("", "echo", keys_of(new_key(NOW)), NOW).check == "missing"


def test_every_altered_character_and_another_app_are_tampering() -> None:
    key = new_key(NOW)
    token = sign(key, new_link_id(), "echo", int(NOW + 3600))
    assert verify(token, "other", keys_of(key), NOW).check == "tampered"  # a link of one app opens no other
    for i, c in enumerate(token):
        if c == ".":
            continue
        other = str((int(c) + 1) % 10) if c.isdigit() else "b" if c != "b" else "c"  # a character of its kind
        changed = token[:i] + other + token[i + 1:]
        assert verify(changed, "echo", keys_of(key), NOW).check == "tampered", (i, changed)
    # a later expiry written into a valid token: the signature no longer holds
    link_id, expires, kid, signature = token.split(".")
    assert verify(f"{link_id}.{int(expires) + 86400}.{kid}.{signature}", "echo", keys_of(key), NOW).check == "tampered"
    for bad in (token[:-1], token + "x", token.replace(".", "", 1), "x" * 60, "a.b.c.d", f"{token}&l=1"):
        assert verify(bad, "echo", keys_of(key), NOW).check == "tampered", bad


def test_another_key_does_not_verify_and_a_signature_made_with_it_is_refused() -> None:
    ours, theirs = new_key(NOW), new_key(NOW)
    forged = sign(msgspec.structs.replace(theirs, kid=ours.kid), new_link_id(), "echo", int(NOW + 3600))
    assert verify(forged, "echo", keys_of(ours), NOW).check == "tampered"


def test_rotation_keeps_older_links_valid_until_their_key_is_retired() -> None:
    old = new_key(NOW)
    old_token = sign(old, new_link_id(), "echo", int(NOW + 3600))
    new = new_key(NOW + 10)
    new_token = sign(new, new_link_id(), "echo", int(NOW + 3600))
    both = keys_of(old, new)
    assert verify(old_token, "echo", both, NOW).check == "ok"
    assert verify(new_token, "echo", both, NOW).check == "ok"
    assert verify(new_token, "echo", keys_of(old), NOW).check == "tampered"  # a gateway that lacks the new key
    retired = keys_of(msgspec.structs.replace(old, retired=True), new)
    assert verify(old_token, "echo", retired, NOW).check == "retired"
    assert verify(new_token, "echo", retired, NOW).check == "ok"


def test_the_record_refuses_revoked_expired_spent_and_other_apps() -> None:
    link = Link(id=new_link_id(), app="echo", expires=NOW + 60, max=2, claims=1)
    assert refusal(link, "echo", NOW) is None
    assert refusal(msgspec.structs.replace(link, claims=2), "echo", NOW) == "link_spent"
    assert refusal(msgspec.structs.replace(link, max=None, claims=10**6), "echo", NOW) is None
    assert refusal(msgspec.structs.replace(link, revoked=True), "echo", NOW) == "link_revoked"
    assert refusal(link, "echo", NOW + 60) == "link_expired"
    assert refusal(link, "other", NOW) == "link_revoked"
    assert refusal(None, "echo", NOW) == "link_revoked"


def test_info_names_the_state_and_never_the_token() -> None:
    key = new_key(NOW)
    link = Link(id=new_link_id(), app="echo", expires=NOW + 60, max=1, kid=key.kid, label="L3")
    keys = keys_of(key)
    assert info(link, keys, NOW).state == "valid"
    assert info(msgspec.structs.replace(link, claims=1), keys, NOW).state == "spent"
    assert info(link, keys, NOW + 61).state == "expired"
    assert info(msgspec.structs.replace(link, revoked=True), keys, NOW).state == "revoked"
    assert info(link, keys_of(msgspec.structs.replace(key, retired=True)), NOW).state == "key retired"
    assert info(link, keys, NOW).path == ""


SPEC = AppSpec(name="echo", image="swarmpool/echo:latest", port=8080, require_link=True)


def test_the_waiting_room_and_the_limit_pages_keep_the_link() -> None:
    token = sign(new_key(NOW), new_link_id(), "echo", int(NOW + 3600))
    waiting = pages.waiting_page(SPEC, 3, link=token)
    assert f'content="3;url=/launch/echo?l={token}"' in waiting
    assert f'href="/launch/echo?l={token}"' in waiting
    assert f'action="/launch/echo?l={token}"' in pages.limit_page_unlinked(SPEC, 1, [None], "t" * 32, NOW, token)
    assert "/launch/echo?l=" not in pages.waiting_page(SPEC, 3)
    assert "&lt;" in pages.waiting_page(SPEC, 3, link="<x>") or "%3Cx%3E" in pages.waiting_page(SPEC, 3, link="<x>")


@pytest.mark.parametrize("why", sorted(pages.LINK_REFUSALS))
def test_every_refusal_has_a_4xx_and_a_page(why: str) -> None:
    status = pages.LINK_REFUSALS[why][0]
    assert status in (403, 410)
    assert "<h1>" in pages.link_refused_page(SPEC, why)


def test_the_gateway_server_log_keeps_a_prefix_of_a_token(caplog: pytest.LogCaptureFixture) -> None:
    token = sign(new_key(NOW), new_link_id(), "echo", int(NOW + 3600))
    with caplog.at_level(logging.INFO, logger=SERVER_LOG.name):
        SERVER_LOG.info("Bad request line: GET /launch/echo?l=%s&x=1 HTTP/1.1", token)
    assert token not in caplog.text
    assert f"l={token[:6]}…&x=1" in caplog.text


def test_a_claim_names_a_link_by_its_id_only_and_older_claims_still_decode() -> None:
    from swarmpool.bus.messages import ClaimRequest

    assert msgspec.json.decode(b'{"app": "echo", "wait": 1}', type=ClaimRequest).link == ""
    link_id = new_link_id()
    assert msgspec.json.decode(msgspec.json.encode(ClaimRequest(app="echo", link=link_id)), type=ClaimRequest).link == link_id
    for bad in ("link.>", "*", "a" * 17, sign(new_key(NOW), link_id, "echo", int(NOW))):
        with pytest.raises(msgspec.ValidationError):  # malformed: the runtime logs, counts and drops it
            msgspec.json.decode(msgspec.json.encode({"app": "echo", "link": bad}), type=ClaimRequest)
