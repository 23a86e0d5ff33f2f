"""The tests' one wait (tests/fixtures.py wait_for): plain and async probes, a deadline that names what it awaited."""

from __future__ import annotations

import pytest

from tests.fixtures import wait_for


async def test_wait_for_returns_the_first_truthy_answer_of_a_plain_or_async_probe() -> None:
    calls = iter([None, 0, "", "found"])
    assert await wait_for(lambda: next(calls), timeout=5, interval=0) == "found"

    async def probe() -> list[int]:
        return [1]

    assert await wait_for(probe, timeout=5) == [1]


async def test_wait_for_fails_after_its_deadline_naming_what_and_the_last_answer() -> None:
    with pytest.raises(AssertionError, match=r"timed out after 0 s waiting for the pool \(last: \[\]\)"):
        await wait_for(lambda: [], timeout=0.05, what="the pool", interval=0.01)
