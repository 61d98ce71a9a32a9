"""Waiting for a condition, for tests, benchmarks and load scripts: poll, never sleep-and-hope."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


async def wait_until(check: Callable[[], Awaitable[Any]], *, timeout: float = 30, interval: float = 0.05,
                     what: str = "condition", error: type[Exception] = AssertionError) -> Any:
    """Polls `check` until it returns something truthy and returns that; raises `error` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout}s waiting for {what} (last: {value!r})")
        await asyncio.sleep(interval)
