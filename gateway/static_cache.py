"""The shared static cache: an app's static files, stored once per image and compressed once.

Pure logic (no I/O): which requests and responses may be cached, the LRU bounded in bytes, the
content negotiation. The proxy fills it only from instances no student has touched.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import hashlib
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass

from multidict import CIMultiDict

# the URLs carry the instance id (new for every session) and an instance never changes image:
# a browser may keep what it got for as long as the session lives
CACHE_CONTROL = "public, max-age=86400, immutable"
COMPRESS_MIN = 512  # smaller bodies gain nothing from gzip
_TEXT_TYPES = ("text/", "application/javascript", "application/json", "application/xml", "image/svg+xml",
               "application/wasm", "application/manifest+json", "font/ttf", "font/otf", "application/x-javascript")
_KEPT_HEADERS = ("Content-Type", "Last-Modified", "Content-Language")


@dataclass(frozen=True, slots=True)
class Key:
    """One cached response: the image it came from, its path below the instance prefix, its query."""

    image: str
    path: str  # relative to the instance prefix, e.g. "voila/static/voila.js"
    query: str = ""


@dataclass(frozen=True, slots=True)
class Asset:
    """A cached body, as sent and compressed once."""

    body: bytes
    gzipped: bytes | None  # None: not worth compressing (binary, tiny, or no smaller)
    etag: str
    headers: tuple[tuple[str, str], ...]  # kept upstream headers (Content-Type, Last-Modified)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


def static_path(relative: str, static_paths: Iterable[str]) -> bool:
    """Whether a path below the instance prefix lies under one of the app's static folders, or matches one
    of its file patterns (`*` and `?` never match "/": "*.js" takes "a.js", not "x/a.js")."""
    lowered = relative.lower()
    if (not relative or relative.startswith("/") or "//" in relative or "%2e" in lowered or "%2f" in lowered
            or "%5c" in lowered or "\\" in relative or any(part in (".", "..") for part in relative.split("/"))):
        return False
    for root in static_paths:
        if "*" in root or "?" in root:
            if _pattern(root).fullmatch(relative):
                return True
            continue
        root = root.strip("/")
        if root and (relative == root or relative.startswith(root + "/")):
            return True
    return False


@functools.lru_cache(maxsize=256)
def _pattern(glob: str) -> re.Pattern[str]:
    """A static_paths file pattern as a regular expression: `*` is [^/]*, `?` is [^/], the rest literal."""
    return re.compile("".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in glob))


def cacheable(method: str, status: int, headers: Mapping[str, str]) -> bool:
    """A response every student of the image may get: a plain GET 200 that sets no cookie and is
    neither private, nor negotiated on anything but its encoding, nor already compressed.

    `no-cache` (store, but revalidate before use) is accepted: jupyter_server sends it for every
    labextension file. The key holds the image id and an image never changes, so a revalidation
    with any untouched instance of the image would always confirm the stored copy. `no-store` and
    `private` (per-user answers) are refused."""
    h = CIMultiDict(headers)
    if method != "GET" or status != 200 or "Set-Cookie" in h:
        return False
    if h.get("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
        return False
    cache_control = ",".join(h.getall("Cache-Control", [])).lower()
    if any(word in cache_control for word in ("no-store", "private")):
        return False
    vary = {v.strip().lower() for v in ",".join(h.getall("Vary", [])).split(",") if v.strip()}
    return vary <= {"accept-encoding"}


def fill_cookie(set_cookies: Iterable[str]) -> str:
    """The Cookie header that answers an untouched instance's Set-Cookie (e.g. jupyter_server's
    anonymous identity, set on every cookie-less request): the fill asks once more with it, and
    stores only an answer that then sets no cookie. "" when there is nothing to send back."""
    from http.cookies import CookieError, SimpleCookie

    pairs = []
    for line in set_cookies:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(line)
        except CookieError:
            return ""
        pairs += [f"{name}={morsel.coded_value}" for name, morsel in jar.items()]
    return "; ".join(pairs)


def compressible(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith(_TEXT_TYPES) or kind.endswith(("+json", "+xml"))


def make_asset(body: bytes, headers: Mapping[str, str]) -> Asset:
    """Store a body once: its validator, the headers worth keeping, its gzip form if smaller."""
    h = CIMultiDict(headers)
    kept = tuple((name, h[name]) for name in _KEPT_HEADERS if name in h)
    gzipped = None
    if len(body) >= COMPRESS_MIN and compressible(h.get("Content-Type", "")):
        packed = gzip.compress(body, compresslevel=9, mtime=0)
        gzipped = packed if len(packed) < len(body) else None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body=body, gzipped=gzipped, etag=etag, headers=kept)


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether the client takes gzip (`gzip;q=0` and `*;q=0` refuse it)."""
    offered: dict[str, float] = {}
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if not token:
            continue
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        offered[token] = q
    if "gzip" in offered:
        return offered["gzip"] > 0
    return offered.get("*", 0.0) > 0


def gzip_etag(etag: str) -> str:
    """The validator of the gzip representation (another representation, another tag)."""
    return etag[:-1] + '-gzip"'


def not_modified(if_none_match: str, etag: str) -> bool:
    """Whether the client's copy (either representation) is current: a 304 is enough."""
    tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
    return "*" in tags or etag in tags or gzip_etag(etag) in tags


def response_parts(asset: Asset, accept_encoding: str) -> tuple[bytes, CIMultiDict[str]]:
    """The body and headers one client gets: gzip when it takes it, identical content either way."""
    headers: CIMultiDict[str] = CIMultiDict(asset.headers)
    headers["ETag"] = asset.etag
    headers["Cache-Control"] = CACHE_CONTROL
    if asset.gzipped is None:
        return asset.body, headers
    headers["Vary"] = "Accept-Encoding"
    if accepts_gzip(accept_encoding):
        headers["Content-Encoding"] = "gzip"
        headers["ETag"] = gzip_etag(asset.etag)
        return asset.gzipped, headers
    return asset.body, headers


class StaticCache:
    """LRU of assets bounded in bytes, at most `max_variants` queries per path, one image per app."""

    def __init__(self, max_bytes: int, max_variants: int = 8, max_asset: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_variants = max_variants
        self.max_asset = max_asset if max_asset is not None else max(max_bytes // 8, 1)
        self.bytes = 0
        self.hits = 0
        self.fills = 0
        self._assets: OrderedDict[Key, Asset] = OrderedDict()
        self._variants: dict[tuple[str, str], int] = {}
        self._image_of: dict[str, str] = {}  # app -> the image its entries come from
        self._apps: dict[str, str] = {}  # image -> app
        self._loading: dict[Key, asyncio.Future[Asset | None]] = {}

    def __len__(self) -> int:
        return len(self._assets)

    def get(self, key: Key) -> Asset | None:
        asset = self._assets.get(key)
        if asset is not None:
            self._assets.move_to_end(key)
            self.hits += 1
        return asset

    def accepts(self, key: Key) -> bool:
        """Whether a new entry for `key` may be stored (a cap on query variants per path)."""
        if key in self._assets or not key.query:
            return True
        return self._variants.get((key.image, key.path), 0) < self.max_variants

    def put(self, app: str, key: Key, asset: Asset) -> bool:
        """Store `asset`; an image new for `app` drops the entries of the image before it."""
        if asset.size > self.max_asset or not self.accepts(key):
            return False
        previous = self._image_of.get(app)
        if previous is not None and previous != key.image:
            self.drop_image(previous)
        self._image_of[app] = key.image
        self._apps[key.image] = app
        old = self._assets.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        elif key.query:
            self._variants[(key.image, key.path)] = self._variants.get((key.image, key.path), 0) + 1
        self._assets[key] = asset
        self.bytes += asset.size
        self.fills += 1
        while self.bytes > self.max_bytes and self._assets:
            self._evict(next(iter(self._assets)))
        return True

    def drop_image(self, image: str) -> int:
        """Forget every entry of one image; returns how many."""
        gone = [k for k in self._assets if k.image == image]
        for key in gone:
            self._evict(key)
        app = self._apps.pop(image, None)
        if app is not None and self._image_of.get(app) == image:
            del self._image_of[app]
        return len(gone)

    def _evict(self, key: Key) -> None:
        asset = self._assets.pop(key)
        self.bytes -= asset.size
        if key.query:
            variant = (key.image, key.path)
            self._variants[variant] -= 1
            if not self._variants[variant]:
                del self._variants[variant]

    async def load(self, key: Key, loader: Callable[[], Awaitable[Asset | None]]) -> Asset | None:
        """One fetch per key however many students ask at once; the others wait for it."""
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Asset | None] = asyncio.get_running_loop().create_future()
        self._loading[key] = future
        try:
            asset = await loader()
        except BaseException as err:
            future.set_result(None)
            if isinstance(err, Exception):
                return None
            raise
        finally:
            self._loading.pop(key, None)
        future.set_result(asset)
        return asset
