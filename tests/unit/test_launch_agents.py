"""Which user agents get the description page instead of a session, and the browser key, table-driven."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from swarmpool.bus.spec import Settings
from swarmpool.gateway.context import BROWSER_COOKIE, GATEWAY
from swarmpool.gateway.launch import browser_key, is_preview_agent


@pytest.mark.parametrize("agent", [
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Slack-ImgProxy (+https://api.slack.com/robots)",
    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) SkypeUriPreview Preview/0.5",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "Twitterbot/1.0",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    "WhatsApp/2.23.20.0 A",
    "TelegramBot (like TwitterBot)",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
])
def test_previews_and_crawlers_are_recognised(agent: str) -> None:
    assert is_preview_agent(agent)


@pytest.mark.parametrize("agent", [
    "",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Safari/605.1.15",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:121.0) Gecko/20100101 Firefox/121.0",
    "Mozilla/5.0 (Linux; Android 9; CUBOT X19) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0 Mobile Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148 "
    "[FBAN/FBIOS;FBAV/440.0]",  # Facebook's in-app browser: a person
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Teams/1.6.00 Chrome/108 "
    "Electron/22 Safari/537.36",  # a student in the Teams desktop app
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) YaBrowser/23.11 Safari/537.36",
    "Python/3.11 aiohttp/3.14.5",  # tests and benchmarks
])
def test_browsers_are_not_previews(agent: str) -> None:
    assert not is_preview_agent(agent)


def _plain_http_request(cookie: str | None = None) -> web.Request:
    """A request as the gateway sees it over plain HTTP (the default trusted proxies, no forwarded scheme)."""
    app = web.Application()
    app[GATEWAY] = SimpleNamespace(catalogue=SimpleNamespace(settings=Settings()))  # type: ignore[assignment]
    return make_mocked_request("GET", "/launch/echo", headers={"Cookie": cookie} if cookie else None, app=app)


def test_browser_key_is_a_hash_of_a_valid_cookie_else_a_new_one() -> None:
    fresh_key, new = browser_key(_plain_http_request())
    assert new is not None and len(new) == 22 and new not in fresh_key
    again, none = browser_key(_plain_http_request(f"{BROWSER_COOKIE}={new}"))
    assert none is None and again == fresh_key  # the same browser, the same opaque key
    bad_key, replaced = browser_key(_plain_http_request(f"{BROWSER_COOKIE}=x;y"))
    assert replaced is not None and bad_key != fresh_key
