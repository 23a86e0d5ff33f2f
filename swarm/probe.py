"""Readiness probe of an instance endpoint over HTTP (the endpoint is always host:port we own)."""

from __future__ import annotations

import asyncio
import logging

import aiohttp

log = logging.getLogger(__name__)

_session: aiohttp.ClientSession | None = None


def _client() -> aiohttp.ClientSession:
    global _session  # one pooled client per process; closed by close_probe_client()
    if _session is None or _session.closed:
        _session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2),
                                         connector=aiohttp.TCPConnector(limit=0, force_close=True))
    return _session


async def probe_http(endpoint: str, path: str) -> bool:
    """True when GET http://<endpoint><path> answers 2xx."""
    try:
        async with _client().get(f"http://{endpoint}{path}", allow_redirects=False) as response:
            await response.read()
            return 200 <= response.status < 300
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        return False


async def close_probe_client() -> None:
    global _session
    if _session is not None:
        await _session.close()
        _session = None
