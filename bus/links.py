"""Lecture links: signed, expiring launch URLs for apps with `require_link`, with an optional claim budget.

A token is ``<id>.<expires>.<kid>.<signature>``: the link's id, its expiry (UNIX seconds), the signing
key's id and an HMAC-SHA256 (truncated to 144 bits) of the id, the app and the expiry under that key.
The gateway verifies it (keys mirrored from KV ``links.keys`` of the config bucket, several valid at
once); the claimer counts the claim on the link's own record (KV ``link.<id>``, a CAS on its revision),
so every gateway and functions host sees one count. A token is a capability to claim, never to a
session; logs and metrics name a link by its id's prefix only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue

from swarmpool.bus.messages import Link, LinkInfo, LinkKeys, Requester, SigningKey
from swarmpool.bus.state import read_modify_cas, stored_keys
from swarmpool.bus.subjects import Subjects

log = logging.getLogger(__name__)

KEYS_KEY = "links.keys"
LINK_PREFIX = "link."
_CONTEXT = b"swarmpool lecture link v1\x00"
_TOKEN = re.compile(r"^([a-z2-7]{16})\.([0-9]{1,12})\.([0-9a-f]{8})\.([A-Za-z0-9_-]{24})$")
_encode = msgspec.json.Encoder().encode
_decode_link = msgspec.json.Decoder(Link).decode
_decode_keys = msgspec.json.Decoder(LinkKeys).decode
REFETCH_EVERY = 1.0  # seconds: a gateway reads the keys outside its watch at most this often
ATTEMPTS = 16  # CAS attempts on one key before giving up (many gateways claiming on one link at once)

Check = Literal["ok", "missing", "tampered", "expired", "retired"]
Refusal = Literal["link_expired", "link_revoked", "link_spent"]


def new_link_id() -> str:
    """16 base32 characters (80 random bits)."""
    return base64.b32encode(secrets.token_bytes(10)).decode().lower()


def short_link(link_id: str) -> str:
    """How logs and events name a link: its first 6 characters."""
    return link_id[:6]


def new_key(now: float) -> SigningKey:
    return SigningKey(kid=secrets.token_hex(4), secret=secrets.token_hex(32), created_at=now)


def _signature(secret: str, link_id: str, app: str, expires: int) -> str:
    mac = hmac.new(bytes.fromhex(secret), _CONTEXT + f"{link_id}\x00{app}\x00{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()[:18]).decode()


def sign(key: SigningKey, link_id: str, app: str, expires: int) -> str:
    """The token of one link, signed with `key`."""
    return f"{link_id}.{expires}.{key.kid}.{_signature(key.secret, link_id, app, expires)}"


@dataclass(frozen=True)
class Verified:
    """What a token says, once checked: `check` is "ok" or why not; `link_id` when the signature held."""

    check: Check
    link_id: str = ""
    kid: str = ""


def key_id(token: str) -> str:
    """The signing key a well-formed token names ("" when malformed)."""
    match = _TOKEN.fullmatch(token)
    return match.group(3) if match else ""


def verify(token: str, app: str, keys: LinkKeys, now: float) -> Verified:
    """Check a token for `app`: missing, tampered (malformed, an unknown key, a wrong signature or
    another app's), retired (its key was retired), expired, or ok."""
    if not token:
        return Verified("missing")
    match = _TOKEN.fullmatch(token)
    if match is None:
        return Verified("tampered")
    link_id, expires, kid, signature = match.groups()
    key = next((k for k in keys.keys if k.kid == kid), None)
    if key is None:
        return Verified("tampered")
    if not hmac.compare_digest(_signature(key.secret, link_id, app, int(expires)), signature):
        return Verified("tampered")
    if key.retired:
        return Verified("retired", link_id, kid)
    if int(expires) <= now:
        return Verified("expired", link_id, kid)
    return Verified("ok", link_id, kid)


def refusal(link: Link | None, app: str, now: float) -> Refusal | None:
    """Why a link's record refuses one more claim of `app` (None: it may claim)."""
    if link is None or link.app != app or link.revoked:
        return "link_revoked"
    if link.expires <= now:
        return "link_expired"
    if link.max is not None and link.claims >= link.max:
        return "link_spent"
    return None


def info(link: Link, keys: LinkKeys, now: float, path: str = "") -> LinkInfo:
    """A link as the admin verbs show it."""
    key = next((k for k in keys.keys if k.kid == link.kid), None)
    state = ("revoked" if link.revoked else "key retired" if key is None or key.retired
             else "expired" if link.expires <= now
             else "spent" if link.max is not None and link.claims >= link.max else "valid")
    return LinkInfo(id=link.id, app=link.app, expires=link.expires, max=link.max, claims=link.claims, state=state,
                    label=link.label, path=path)


class Links:
    """The links and their signing keys in the config bucket (functions role: read and write)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def keys(self) -> tuple[LinkKeys, int]:
        """The signing keys and their revision (0: none yet)."""
        try:
            entry = await self._kv.get(KEYS_KEY)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return LinkKeys(), 0
        if not entry.value:
            return LinkKeys(), entry.revision or 0
        return _decode_keys(entry.value), entry.revision or 0

    async def _change_keys(self, change: Callable[[LinkKeys], LinkKeys | None]) -> LinkKeys:
        keys, _, _ = await read_modify_cas(self._kv, KEYS_KEY, self.keys, change, attempts=ATTEMPTS)
        return keys

    async def signing_key(self, now: float) -> SigningKey:
        """The newest unretired key (made at the first link)."""
        def ensure(keys: LinkKeys) -> LinkKeys | None:
            if any(not k.retired for k in keys.keys):
                return None
            return LinkKeys(keys=[*keys.keys, new_key(now)])

        keys = await self._change_keys(ensure)
        return [k for k in keys.keys if not k.retired][-1]

    async def rotate(self, now: float, retire: bool) -> tuple[SigningKey, list[str]]:
        """Add a new signing key (new links use it; older keys still verify), and with `retire`, retire
        the others; the new key and the ids of the keys retired now."""
        fresh = new_key(now)
        retired: list[str] = []

        def change(keys: LinkKeys) -> LinkKeys:
            retired.clear()
            kept = []
            for k in keys.keys:
                if retire and not k.retired:
                    retired.append(k.kid)
                    k = msgspec.structs.replace(k, retired=True)
                kept.append(k)
            return LinkKeys(keys=[*kept, fresh])

        await self._change_keys(change)
        return fresh, retired

    async def create(self, app: str, for_seconds: float, max_claims: int | None, label: str, by: Requester,
                     now: float) -> tuple[Link, str]:
        """A new link and its token."""
        key = await self.signing_key(now)
        expires = int(now + for_seconds)
        link = Link(id=new_link_id(), app=app, expires=float(expires), max=max_claims, label=label, kid=key.kid,
                    created_at=now, by=by)
        await self._kv.create(LINK_PREFIX + link.id, _encode(link))
        return link, sign(key, link.id, app, expires)

    async def get(self, link_id: str) -> tuple[Link, int] | None:
        try:
            entry = await self._kv.get(LINK_PREFIX + link_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        if not entry.value or not entry.revision:
            return None
        return _decode_link(entry.value), entry.revision

    async def all(self) -> list[Link]:
        """Every link stored, oldest first."""
        names = await stored_keys(self._kv, LINK_PREFIX)  # not kv.keys(): it misses a link being claimed on
        found = [await self.get(k[len(LINK_PREFIX):]) for k in names]
        return sorted((f[0] for f in found if f is not None), key=lambda link: link.created_at)

    async def update(self, link_id: str, change: Callable[[Link], Link | None]) -> Link | None:
        """Read-modify-CAS of one link (None: no such link); `change` returns None to leave it alone."""
        for _ in range(ATTEMPTS):
            found = await self.get(link_id)
            if found is None:
                return None
            link, revision = found
            new = change(link)
            if new is None:
                return link
            try:
                await self._kv.update(LINK_PREFIX + link_id, _encode(new), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return new
        raise RuntimeError(f"link {short_link(link_id)}: gave up after {ATTEMPTS} attempts")

    async def reserve(self, link_id: str, app: str, now: float) -> Refusal | None:
        """Count one claim on the link (CAS), or say why it may not claim."""
        why: list[Refusal] = []

        def take(link: Link) -> Link | None:
            why.clear()
            if (reason := refusal(link, app, now)) is not None:
                why.append(reason)
                return None
            return msgspec.structs.replace(link, claims=link.claims + 1)

        if await self.update(link_id, take) is None:
            return "link_revoked"  # no such link (removed)
        return why[0] if why else None

    async def give_back(self, link_id: str) -> None:
        """A counted claim found no instance: uncount it."""
        await self.update(link_id, lambda link: msgspec.structs.replace(link, claims=max(link.claims - 1, 0)))


class KeysMirror:
    """The signing keys as a gateway sees them: a watch of ``links.keys`` (read access to the bucket)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv
        self._keys = LinkKeys()
        self._revision = 0
        self._mirror: Any = None
        self._fetched_at = -1.0  # monotonic time of the last read outside the watch

    @classmethod
    async def open(cls, nc: NATS, subjects: Subjects) -> "KeysMirror":
        from swarmpool.bus.state import _Mirror

        kv = await nc.jetstream().key_value(subjects.config_bucket)
        mirror = cls(kv)
        mirror._mirror = await _Mirror.start(await kv.watch(KEYS_KEY), mirror._apply, "link-keys-mirror")
        return mirror

    def _apply(self, entry: Any) -> None:
        if entry.operation in ("DEL", "PURGE") or not entry.value:
            return
        self._learn(_decode_keys(entry.value), entry.revision or 0)

    def _learn(self, keys: LinkKeys, revision: int) -> None:
        if revision > self._revision:
            self._keys, self._revision = keys, revision

    def current(self) -> LinkKeys:
        return self._keys

    async def verify(self, token: str, app: str, now: float) -> Verified:
        """`verify` against the mirrored keys; a key not seen yet (made a moment ago) is read once from KV."""
        verified = verify(token, app, self._keys, now)
        kid = key_id(token)
        if (verified.check == "tampered" and kid and all(k.kid != kid for k in self._keys.keys)
                and time.monotonic() - self._fetched_at > REFETCH_EVERY):
            self._fetched_at = time.monotonic()  # a stream of forged key ids costs one read a second at most
            try:
                entry = await self._kv.get(KEYS_KEY)
                if entry.value:
                    self._learn(_decode_keys(entry.value), entry.revision or 0)
            except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
                pass
            verified = verify(token, app, self._keys, now)
        return verified

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
