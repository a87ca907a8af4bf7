"""Concurrent storage calls, a few at a time: a pass over hundreds of actions writes their rows
side by side without opening hundreds of connections to the table service at once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")

# Concurrent calls per batch; well below the HTTP client's connection pool.
BATCH = 16


async def gather_bounded(calls: Iterable[Awaitable[T]], batch: int = BATCH) -> list[T]:
    """Await `calls` in batches of `batch`, in order; their results, in order."""
    pending = list(calls)
    results: list[T] = []
    for start in range(0, len(pending), batch):
        results += await asyncio.gather(*pending[start : start + batch])
    return results
