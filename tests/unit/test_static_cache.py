"""The shared static cache's pure decisions: what may be cached, the LRU bound, negotiation."""

from __future__ import annotations

import asyncio
import gzip

import pytest

from swarmpool.gateway.static_cache import (
    DEMAND_PATHS,
    MAX_QUERY,
    Key,
    StaticCache,
    accepts_gzip,
    cacheable,
    fill_cookie,
    make_asset,
    not_modified,
    response_parts,
    static_path,
)

PATHS = ["voila/static/", "voila/templates"]
JS = {"Content-Type": "application/javascript"}


@pytest.mark.parametrize(("relative", "expected"), [
    ("voila/static/7155.voila.js", True),
    ("voila/templates/lab/index.css", True),
    ("voila/static", True),
    ("voila/staticx/a.js", False),
    ("voila/render/notebook.ipynb", False),
    ("", False),
    ("/voila/static/a.js", False),
    ("voila/static/../../api/kernels", False),
    ("voila/static/%2e%2e/api/kernels", False),
    ("voila/static/%2E%2E%2Fapi", False),
    ("voila/static//a.js", False),
    ("voila/static/./a.js", False),
])
def test_only_paths_under_static_paths(relative: str, expected: bool) -> None:
    assert static_path(relative, PATHS) is expected


# Pluto's frontend-dist files sit at the prefix root beside its notebook endpoints
PLUTO = ["ionicons/", "*.????????.js", "*.????????.css", "*.????????.woff2"]


@pytest.mark.parametrize(("relative", "expected"), [
    ("editor.88340a43.js", True),
    ("editor.4e1ac15b.css", True),
    ("JuliaMono-Regular.de4da299.woff2", True),
    ("ionicons/add-outline.svg", True),
    # the endpoints that read or run a notebook, and anything with another shape, never
    ("edit", False),
    ("open", False),
    ("statefile", False),
    ("notebookfile", False),
    ("ping", False),
    ("editor.html", False),
    ("editor.88340a4.js", False),  # seven characters where the pattern has eight
    ("x/editor.88340a43.js", False),  # `*` never crosses "/"
    ("editor.88340a43.js/../../statefile", False),
    ("editor.88340a43.js%2f..%2fstatefile", False),
    ("editor.88340a43.jsx", False),
])
def test_file_patterns_take_only_matching_files(relative: str, expected: bool) -> None:
    assert static_path(relative, PLUTO) is expected


def test_pattern_characters_are_literal_except_star_and_question_mark() -> None:
    assert static_path("a+b.js", ["a+b.js*"])
    assert not static_path("aab.js", ["a+b.js*"])
    assert not static_path("a.js", ["[ab].js?"])


def test_no_static_paths_no_cache() -> None:
    assert not static_path("voila/static/a.js", [])


@pytest.mark.parametrize(("method", "status", "headers", "expected"), [
    ("GET", 200, JS, True),
    ("GET", 200, {**JS, "Vary": "Accept-Encoding"}, True),
    ("HEAD", 200, JS, False),
    ("POST", 200, JS, False),
    ("GET", 404, JS, False),
    ("GET", 304, JS, False),
    ("GET", 302, JS, False),
    ("GET", 200, {**JS, "Set-Cookie": "_xsrf=abc; Path=/"}, False),
    ("GET", 200, {**JS, "Cache-Control": "no-store"}, False),
    ("GET", 200, {**JS, "Cache-Control": "private, max-age=60"}, False),
    ("GET", 200, {**JS, "Cache-Control": "no-cache, no-store, must-revalidate"}, False),
    ("GET", 200, {**JS, "Cache-Control": "no-cache"}, True),  # jupyter_server's labextension files
    ("GET", 200, {**JS, "Vary": "Cookie"}, False),
    ("GET", 200, {**JS, "Content-Encoding": "gzip"}, False),
])
def test_cacheable(method: str, status: int, headers: dict[str, str], expected: bool) -> None:
    assert cacheable(method, status, headers) is expected


def test_text_is_compressed_once_and_identical_when_decompressed() -> None:
    body = b"console.log('hello');\n" * 500
    asset = make_asset(body, {**JS, "Last-Modified": "Tue, 01 Jan 2030 00:00:00 GMT", "Server": "tornado"})
    assert asset.gzipped is not None and len(asset.gzipped) < len(body) / 5
    assert gzip.decompress(asset.gzipped) == body
    plain, plain_headers = response_parts(asset, "")
    packed, packed_headers = response_parts(asset, "gzip, deflate, br")
    assert plain == body and "Content-Encoding" not in plain_headers
    assert packed_headers["Content-Encoding"] == "gzip" and gzip.decompress(packed) == plain
    assert plain_headers["ETag"] == asset.etag and packed_headers["ETag"] == asset.etag[:-1] + '-gzip"'
    for headers in (plain_headers, packed_headers):
        assert not_modified(headers["ETag"], asset.etag)
        assert headers["Vary"] == "Accept-Encoding"
        assert "max-age" in headers["Cache-Control"]
        assert headers["Content-Type"] == "application/javascript"
        assert "Server" not in headers


def test_binary_and_tiny_bodies_are_kept_as_they_are() -> None:
    png = make_asset(b"\x89PNG" + bytes(range(256)) * 10, {"Content-Type": "image/png"})
    tiny = make_asset(b"a{}", {"Content-Type": "text/css"})
    assert png.gzipped is None and tiny.gzipped is None
    body, headers = response_parts(png, "gzip")
    assert "Content-Encoding" not in headers and "Vary" not in headers and body == png.body


@pytest.mark.parametrize(("header", "expected"), [
    ("gzip", True), ("gzip, deflate, br, zstd", True), ("br;q=1.0, gzip;q=0.8", True),
    ("", False), ("identity", False), ("gzip;q=0", False), ("*", True), ("*;q=0", False),
    ("br, *;q=0", False), ("GZIP", True), ("gzip;q=bogus", False),
])
def test_accepts_gzip(header: str, expected: bool) -> None:
    assert accepts_gzip(header) is expected


def test_not_modified() -> None:
    assert not_modified('"abc"', '"abc"')
    assert not_modified('W/"abc", "x"', '"abc"')
    assert not_modified("*", '"abc"')
    assert not not_modified('"x"', '"abc"')
    assert not not_modified("", '"abc"')


def test_lru_bounded_in_bytes() -> None:
    cache = StaticCache(max_bytes=1000, max_asset=600)
    a, b, c = Key("img", "s/a"), Key("img", "s/b"), Key("img", "s/c")
    assert cache.put("app", a, make_asset(bytes(400), {}))
    assert cache.put("app", b, make_asset(bytes(400), {}))
    assert cache.get(a) is not None  # a is now the most recent
    assert cache.put("app", c, make_asset(bytes(400), {}))
    assert cache.get(b) is None and cache.get(a) is not None and cache.get(c) is not None
    assert cache.bytes == 800
    assert not cache.put("app", Key("img", "s/big"), make_asset(bytes(601), {}))


def test_query_variants_are_capped_per_path() -> None:
    cache = StaticCache(max_bytes=10_000, max_variants=2)
    for query in ("v=1", "v=2"):
        cache.note(Key("img", "s/a.js", query), "s1")
        assert cache.put("app", Key("img", "s/a.js", query), make_asset(b"x", {}))
    cache.note(Key("img", "s/a.js", "v=3"), "s1")
    assert not cache.accepts(Key("img", "s/a.js", "v=3"))  # asked for no more than the others
    assert not cache.put("app", Key("img", "s/a.js", "v=3"), make_asset(b"x", {}))
    assert cache.accepts(Key("img", "s/a.js", "v=1"))  # already there
    assert cache.accepts(Key("img", "s/a.js"))  # no query: always one slot
    assert cache.accepts(Key("img", "s/b.js", "v=3"))


def _ask(cache: StaticCache, key: Key, session: str) -> bool:
    """What the proxy does for one request: count it, serve a hit, or store a miss if admitted."""
    cache.note(key, session)
    if cache.get(key) is not None:
        return True
    if cache.accepts(key):
        cache.put("app", key, make_asset(key.query.encode(), {}))
    return False


def test_junk_query_strings_from_one_client_never_keep_out_a_variant_students_request() -> None:
    cache = StaticCache(max_bytes=100_000, max_variants=8)
    real = Key("img", "s/app.js", "v=1.2.3")
    for n in range(200):  # one client, one session: many junk queries, each asked for again and again
        for _ in range(3):
            _ask(cache, Key("img", "s/app.js", f"junk={n}"), "attacker")
    assert len(cache) == 8  # the junk filled the slots
    hits = [_ask(cache, real, f"student{n}") for n in range(5)]
    assert hits == [False, False, True, True, True]  # admitted once a second session asked for it
    for n in range(200, 400):  # more junk: it never evicts the variant students keep asking for
        _ask(cache, Key("img", "s/app.js", f"junk={n}"), "attacker")
        _ask(cache, Key("img", "s/app.js", f"junk={n}"), "attacker")
    assert cache.get(real) is not None
    assert len(cache) == 8


def test_junk_between_two_students_does_not_erase_the_first_ones_demand() -> None:
    cache = StaticCache(max_bytes=100_000, max_variants=2)
    for n in range(2):
        _ask(cache, Key("img", "s/a.js", f"junk={n}"), "attacker")
    real = Key("img", "s/a.js", "v=2")
    assert not _ask(cache, real, "alice")
    for n in range(2, 500):  # far more queries than the demand table keeps
        _ask(cache, Key("img", "s/a.js", f"junk={n}"), "attacker")
    assert cache.demand(real) == 1
    assert not _ask(cache, real, "bob")  # second session: admitted now
    assert cache.get(real) is not None


def test_cached_variants_keep_their_demand_however_many_other_paths_are_asked_for() -> None:
    cache = StaticCache(max_bytes=10_000_000, max_variants=2)
    held = [Key("img", "s/a.js", "v=1"), Key("img", "s/a.js", "v=2")]
    for key in held:
        for n in range(3):
            _ask(cache, key, f"{key.query}-{n}")
    for n in range(DEMAND_PATHS + 10):  # queries on other paths: more than the demand table keeps
        cache.note(Key("img", f"s/other{n}.js", "v=1"), "someone")
    assert [cache.demand(key) for key in held] == [3, 3]
    junk = Key("img", "s/a.js", "junk=1")
    assert not _ask(cache, junk, "attacker") and not cache.accepts(junk)  # one session never beats three
    assert all(cache.get(key) is not None for key in held)


def test_long_queries_are_neither_counted_nor_cached() -> None:
    cache = StaticCache(max_bytes=10_000_000, max_variants=2)
    long = Key("img", "s/a.js", "q=" + "x" * (MAX_QUERY - 1))
    for n in range(3):
        cache.note(long, f"s{n}")
    assert cache.demand(long) == 0 and not cache.accepts(long)
    assert not cache.put("app", long, make_asset(b"x", {})) and len(cache) == 0
    longest = Key("img", "s/a.js", "q=" + "x" * (MAX_QUERY - 2))
    assert not _ask(cache, longest, "s1") and cache.get(longest) is not None


def test_the_demand_table_keeps_a_digest_of_each_query_not_the_query() -> None:
    import tracemalloc

    cache = StaticCache(max_bytes=10_000_000, max_variants=64)  # 256 queries remembered per path
    sessions = [f"session-{n}" for n in range(256)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n, session in enumerate(sessions):  # each query asked once, by its own session: none cached
            cache.note(Key("img", "s/a.js", f"{n:04d}" + "q" * (MAX_QUERY - 4)), session)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert sum(cache.demand(Key("img", "s/a.js", f"{n:04d}" + "q" * (MAX_QUERY - 4))) for n in range(256)) == 256
    assert grown / 256 < MAX_QUERY, f"{grown / 256:.0f} bytes per remembered query"


@pytest.mark.parametrize(("asked", "newcomer", "admitted"), [
    ({"v=1": 3, "v=2": 1}, 2, True),  # more than the weakest (v=2): takes its slot
    ({"v=1": 3, "v=2": 2}, 2, False),  # a tie keeps the variant already there
    ({"v=1": 3, "v=2": 3}, 1, False),
])
def test_a_full_path_admits_by_the_number_of_sessions_asking(asked: dict[str, int], newcomer: int,
                                                              admitted: bool) -> None:
    cache = StaticCache(max_bytes=10_000, max_variants=2)
    for query, sessions in asked.items():
        for n in range(sessions):
            _ask(cache, Key("img", "s/a.js", query), f"{query}-{n}")
    new = Key("img", "s/a.js", "v=3")
    for n in range(newcomer):
        cache.note(new, f"new-{n}")
    assert cache.accepts(new) is admitted
    assert cache.put("app", new, make_asset(b"x", {})) is admitted
    if admitted:
        assert cache.get(Key("img", "s/a.js", "v=2")) is None and cache.get(Key("img", "s/a.js", "v=1"))


def test_a_new_image_drops_the_old_images_entries() -> None:
    cache = StaticCache(max_bytes=10_000)
    cache.put("voila", Key("sha256:old", "s/a.js"), make_asset(b"old", {}))
    cache.put("other", Key("sha256:other", "s/a.js"), make_asset(b"other", {}))
    cache.put("voila", Key("sha256:new", "s/a.js"), make_asset(b"new", {}))
    assert cache.get(Key("sha256:old", "s/a.js")) is None
    assert cache.get(Key("sha256:other", "s/a.js")) is not None
    assert cache.bytes == len(b"other") + len(b"new")


async def test_concurrent_misses_fetch_once() -> None:
    cache = StaticCache(max_bytes=10_000)
    key = Key("img", "s/a.js")
    calls = 0
    gate = asyncio.Event()

    async def loader() -> object:
        nonlocal calls
        calls += 1
        await gate.wait()
        asset = make_asset(b"body", JS)
        cache.put("app", key, asset)
        return asset

    waiting = [asyncio.create_task(cache.load(key, loader)) for _ in range(12)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting)
    assert calls == 1 and all(r is results[0] and r is not None for r in results)


async def test_a_failing_fill_answers_none_to_everyone() -> None:
    cache = StaticCache(max_bytes=10_000)

    async def loader() -> object:
        raise OSError("instance gone")

    assert await cache.load(Key("img", "s/a.js"), loader) is None


def test_fill_cookie_answers_the_identity_an_untouched_instance_set() -> None:
    jupyter = ('username-127-0-0-1-8866="2|1:0|10:179|24:username|8:eyJ1c2VyIjoxfQ==|7d2a"; '
               'expires=Sun, 27 Dec 2026 10:48:42 GMT; HttpOnly; Path=/i/abc/')
    assert fill_cookie([jupyter]) == 'username-127-0-0-1-8866="2|1:0|10:179|24:username|8:eyJ1c2VyIjoxfQ==|7d2a"'
    assert fill_cookie(["a=1; Path=/", "b=2; HttpOnly"]) == "a=1; b=2"
    assert fill_cookie([]) == ""
    assert fill_cookie(["not a cookie at all ;;; ="]) == ""
