"""Small asyncio helpers the cleanup paths depend on."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
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


R = TypeVar("R")


async def run_bounded(func: Callable[[T], Awaitable[object]], items: Iterable[T], limit: int = 16) -> None:
    """``await func(item)`` for every item, at most ``limit`` at once, ``items`` taken one at a time.

    As many tasks as ``limit``, not one per item: ``asyncio.gather`` over
    the files of a repository of 200,000 made 200,000 tasks at once (about a
    kilobyte each, hundreds of MB at the peak). The first failure cancels
    the others and is raised.
    """
    todo = iter(items)

    async def worker() -> None:
        for item in todo:  # one iterator shared by the workers: each item is taken once
            await func(item)

    workers = [asyncio.ensure_future(worker()) for _ in range(limit)]
    try:
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


async def map_bounded(func: Callable[[T], Awaitable[R]], items: Sequence[T], limit: int = 16) -> list[R]:
    """``[await func(item) for item in items]``, at most ``limit`` at once, in order (see :func:`run_bounded`)."""
    results: list[R | None] = [None] * len(items)

    async def one(pair: tuple[int, T]) -> None:
        results[pair[0]] = await func(pair[1])

    await run_bounded(one, enumerate(items), min(limit, max(len(items), 1)))
    return results  # type: ignore[return-value]
