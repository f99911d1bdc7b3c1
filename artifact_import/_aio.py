"""Small asyncio helpers the cleanup paths depend on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def run_to_completion(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if this task is cancelled meanwhile.

    ``asyncio.shield`` alone lets the *waiter* leave at the first cancel: the
    cleanup then runs on detached, and dies half-way if the loop stops (as
    ``asyncio.run`` does right after). Here the waiter stays until the work
    is done, then re-raises the cancellation it received.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                raise
            cancelled = True
            continue
        if cancelled:
            raise asyncio.CancelledError
        return result
