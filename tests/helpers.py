"""Test helpers: poll for a condition instead of sleeping and hoping."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable


async def eventually(predicate: Callable, *, timeout: float = 5.0, interval: float = 0.01, what: str = "condition"):
    """Poll `predicate` (sync or async) until it returns a truthy value; return that value or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)
