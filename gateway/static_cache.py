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
# demand kept per static path, to choose which query variants deserve its slots: the sessions that
# asked for each query (a count that saturates), for a few times more queries than there are slots
DEMAND_CAP = 64  # sessions remembered per query: past this, every popular variant ties
DEMAND_QUERIES = 4  # queries remembered per path, times max_variants
DEMAND_PATHS = 4096  # paths with query demand remembered, all images
MAX_QUERY = 512  # longer query strings are neither counted nor cached (no static file needs them)
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


def query_digest(query: str) -> bytes:
    """What the demand table keeps of a query string: 16 bytes, whatever its length."""
    return hashlib.blake2b(query.encode(), digest_size=16).digest()


class StaticCache:
    """LRU of assets bounded in bytes, at most `max_variants` queries per path, one image per app.

    Which queries of a path hold its slots is decided by demand: how many different sessions asked
    for each. A new query is admitted to a full path only when more sessions asked for it than for
    the least asked-for query there, which it then replaces; so one client's junk query strings (one
    session each, however often repeated) never keep out a variant that students keep requesting.
    A cached variant's demand is kept beside it for as long as it is cached; only the demand of
    queries not cached lives in the bounded table (by digest), where it may be forgotten.
    """

    def __init__(self, max_bytes: int, max_variants: int = 8, max_asset: int | None = None) -> None:
        self.max_bytes = max_bytes
        self.max_variants = max_variants
        self.max_asset = max_asset if max_asset is not None else max(max_bytes // 8, 1)
        self.bytes = 0
        self.hits = 0
        self.fills = 0
        self._assets: OrderedDict[Key, Asset] = OrderedDict()
        # (image, path) -> cached query -> the sessions that asked for it (its demand, kept while cached)
        self._variants: dict[tuple[str, str], dict[str, dict[str, None]]] = {}
        # (image, path) -> digest of an uncached query -> the sessions that asked, oldest path and query first
        self._demand: OrderedDict[tuple[str, str], OrderedDict[bytes, dict[str, None]]] = OrderedDict()
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

    def note(self, key: Key, session: str) -> None:
        """One session asked for `key` (only queries are counted: a path without one always has its
        slot; a query longer than MAX_QUERY is never counted nor cached)."""
        if not key.query or len(key.query) > MAX_QUERY:
            return
        path = (key.image, key.path)
        sessions = self._variants.get(path, {}).get(key.query)
        if sessions is not None:  # cached: its demand is beside it
            if len(sessions) < DEMAND_CAP:
                sessions[session] = None
            return
        queries = self._demand.get(path)
        if queries is None:
            queries = self._demand[path] = OrderedDict()
            while len(self._demand) > DEMAND_PATHS:
                self._demand.popitem(last=False)
        else:
            self._demand.move_to_end(path)
        digest = query_digest(key.query)
        sessions = queries.get(digest)
        if sessions is None:
            self._make_room(session, queries)
            queries[digest] = {session: None}
        elif len(sessions) < DEMAND_CAP:
            sessions[session] = None

    def _make_room(self, session: str, queries: OrderedDict[bytes, dict[str, None]]) -> None:
        """Bound a path's demand for uncached queries before a new one joins it. A session's own
        queries that nobody else asked for go first (one client cannot push out what others asked
        for), then, over the bound, the least asked-for."""
        own = [q for q, asked in queries.items() if len(asked) == 1 and session in asked]
        for query in own[:max(0, len(own) - self.max_variants + 1)]:
            del queries[query]
        excess = len(queries) + 1 - DEMAND_QUERIES * self.max_variants
        if excess > 0:
            candidates = sorted(queries, key=lambda q: len(queries[q]))  # stable: oldest first
            for query in candidates[:excess]:
                del queries[query]

    def demand(self, key: Key) -> int:
        """How many sessions asked for `key` (saturating at DEMAND_CAP)."""
        path = (key.image, key.path)
        held = self._variants.get(path, {}).get(key.query)
        if held is not None:
            return len(held)
        queries = self._demand.get(path)
        return len(queries.get(query_digest(key.query), ())) if queries is not None else 0

    def _weakest(self, key: Key) -> Key | None:
        """The cached query of `key`'s path that fewest sessions asked for (the least recent among ties)."""
        held = self._variants.get((key.image, key.path), {})
        query = min(held, key=lambda q: len(held[q]), default=None)  # in order of storing: min keeps the oldest
        return None if query is None else Key(key.image, key.path, query)

    def accepts(self, key: Key) -> bool:
        """Whether a new entry for `key` may be stored: a free variant slot on its path, or more
        demand than the least asked-for variant there."""
        if len(key.query) > MAX_QUERY:
            return False
        if key in self._assets or not key.query:
            return True
        if len(self._variants.get((key.image, key.path), ())) < self.max_variants:
            return True  # a free slot: a first variant is cached at its first request
        weakest = self._weakest(key)
        return weakest is not None and self.demand(key) > self.demand(weakest)

    def put(self, app: str, key: Key, asset: Asset) -> bool:
        """Store `asset`; an image new for `app` drops the entries of the image before it."""
        if asset.size > self.max_asset or not self.accepts(key):
            return False
        path = (key.image, key.path)
        full = len(self._variants.get(path, ())) >= self.max_variants
        if key not in self._assets and key.query and full:
            weakest = self._weakest(key)
            if weakest is not None:
                self._evict(weakest)  # more asked for than the weakest variant: takes its slot
        previous = self._image_of.get(app)
        if previous is not None and previous != key.image:
            self.drop_image(previous)
        self._image_of[app] = key.image
        self._apps[key.image] = app
        old = self._assets.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        elif key.query:  # its demand moves beside it, out of the table that may forget
            queries = self._demand.get(path)
            sessions = queries.pop(query_digest(key.query), None) if queries is not None else None
            self._variants.setdefault(path, {})[key.query] = sessions or {}
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
        for path in [p for p in self._demand if p[0] == image]:
            del self._demand[path]
        app = self._apps.pop(image, None)
        if app is not None and self._image_of.get(app) == image:
            del self._image_of[app]
        return len(gone)

    def _evict(self, key: Key) -> None:
        asset = self._assets.pop(key)
        self.bytes -= asset.size
        if key.query:
            variant = (key.image, key.path)
            self._variants[variant].pop(key.query, None)
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
