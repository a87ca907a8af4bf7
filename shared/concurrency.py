"""Concurrent calls: storage calls a few at a time (a pass over hundreds of actions writes
their rows side by side without opening hundreds of connections to the table service at once),
and a read started ahead of the step that needs it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

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


@contextlib.asynccontextmanager
async def ahead(call: Coroutine[Any, Any, T]) -> AsyncIterator[asyncio.Task[T]]:
    """Run `call` as a task beside the block, which awaits it where it needs the result. If
    the block leaves without awaiting it (an early return, an error), the task is cancelled
    and whatever it raised is dropped: nothing was waiting for it."""
    task = asyncio.ensure_future(call)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        elif not task.cancelled():
            task.exception()  # read, so that an unawaited failure is not reported as lost
