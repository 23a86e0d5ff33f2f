"""The HTTP readiness probe of an instance: GET one path at its endpoint, and whether it answered 2xx."""

from __future__ import annotations

import asyncio

import aiohttp


class Probe:
    """GETs one path of an instance; one client session for every probe, made on first use."""

    def __init__(self) -> None:
        self._http: aiohttp.ClientSession | None = None

    async def http(self, endpoint: str, path: str) -> bool:
        """True when GET http://<endpoint><path> answers 2xx (the readiness probe of an instance)."""
        if self._http is None or self._http.closed:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2),
                                               connector=aiohttp.TCPConnector(limit=0, force_close=True))
        try:
            async with self._http.get(f"http://{endpoint}{path}", allow_redirects=False) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def close(self) -> None:
        """Close the client session, if one was made."""
        if self._http is not None:
            await self._http.close()
