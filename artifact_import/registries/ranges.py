"""One file over many connections: byte ranges fetched at once, delivered in order.

Hubs, CDNs and S3 cap what one connection carries, so a large file is cut
into ranges of ``range_size`` bytes, fetched side by side, and handed to the
stage chain strictly in order: the verifiers see one stream, as before.

Memory is bounded by *tickets*: a range holds one from the moment it is
claimed until its last byte has been handed on, so the bytes held by all
files of an import are at most ``tickets × range_size``. Connections are a
second, smaller budget, held only while a range is being fetched. Ranges
of a file are claimed in order, so the range a file waits for always has
its ticket and only needs a connection, which fetching ranges give back
without waiting for anything: no file can starve the others into a
deadlock.

A server that answers a range with the whole file (it ignores ``Range``)
ends the parallel attempt: the file goes on over one connection from the
first byte not yet handed on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import attrs

from ..errors import DownloadError, IntegrityError
from ..streams import closing

log = logging.getLogger(__name__)

MiB = 1 << 20

#: Opens the bytes ``[start, end)`` of the file (``end`` None: to its end), retrying and resuming on its own.
OpenRange = Callable[[int, "int | None"], AsyncIterator[bytes]]


class RangeIgnored(DownloadError):
    """The source answered a range request with the whole file."""


@attrs.frozen
class ParallelPolicy:
    """How many connections an import uses and how a file is cut.

    ``connections`` is shared by every file of an import (a file smaller than
    ``min_size`` uses one). Chosen by measurement, see ``benchmarks/README.md``.
    """

    connections: int = 16
    range_size: int = 4 * MiB
    min_size: int = 32 * MiB
    #: At most this many of a file's ranges at once (a file alone still leaves connections to the others).
    per_file: int = 16

    @property
    def tickets(self) -> int:
        """Ranges held at once by all files, fetching or waiting to be handed on: memory is this × range_size."""
        return self.connections + 2

    def __attrs_post_init__(self) -> None:
        if self.connections < 1 or self.per_file < 1:
            raise ValueError("connections must be at least 1")
        if self.range_size < 64 * 1024:
            raise ValueError("range_size must be at least 64 KiB")


class ConnectionBudget:
    """The connections and the range tickets shared by the files of one import."""

    def __init__(self, policy: ParallelPolicy) -> None:
        self.policy = policy
        self.connections = asyncio.Semaphore(policy.connections)
        # A few more tickets than connections: ranges that arrived early wait their turn without idling
        # every connection that could fetch the next ones.
        self.tickets = asyncio.Semaphore(policy.tickets)


class SameVersion:
    """The validator (ETag) every range of a file must carry: the first one seen."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.etag: str | None = None

    def check(self, etag: str | None) -> None:
        if etag is None:
            return
        if self.etag is None:
            self.etag = etag
        elif etag != self.etag:
            raise IntegrityError(
                f"{self.name}: the file changed at the source while it was being downloaded", path=self.name
            )


_END = object()


async def fetch(
    open_range: OpenRange, size: int, offset: int, budget: ConnectionBudget, *, name: str
) -> AsyncIterator[bytes]:
    """The bytes of a ``size``-byte file from ``offset``, over as many connections as it is worth."""
    policy = budget.policy
    if size - offset < policy.min_size or policy.connections == 1:
        async with budget.connections:
            async for chunk in _all_of(open_range(offset, None)):
                yield chunk
        return
    delivered = offset
    try:
        async for chunk in _in_order(open_range, size, offset, budget):
            delivered += len(chunk)
            yield chunk
    except RangeIgnored:
        log.info("%s: the source ignores Range; going on over one connection from byte %d", name, delivered)
        async with budget.connections:
            async for chunk in _all_of(open_range(delivered, None)):
                yield chunk


async def _all_of(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    async with closing(chunks):
        async for chunk in chunks:
            yield chunk


async def _in_order(open_range: OpenRange, size: int, offset: int, budget: ConnectionBudget) -> AsyncIterator[bytes]:
    policy = budget.policy
    starts = range(offset, size, policy.range_size)
    queues: list[asyncio.Queue[object]] = [asyncio.Queue() for _ in starts]
    claimed = 0
    claim_lock = asyncio.Lock()
    held: set[int] = set()  # ranges holding a ticket

    async def worker() -> None:
        nonlocal claimed
        while True:
            async with claim_lock:
                if claimed >= len(starts):
                    return
                index = claimed
                # In order, and the ticket before the claim: the range a file waits for is always claimed first.
                await budget.tickets.acquire()
                held.add(index)
                claimed += 1
            start = starts[index]
            end = min(start + policy.range_size, size)
            queue = queues[index]
            try:
                chunks = open_range(start, end)
                async with budget.connections, closing(chunks):
                    async for chunk in chunks:
                        queue.put_nowait(chunk)
            except Exception as exc:  # handed to the consumer, in order
                queue.put_nowait(exc)
                return
            queue.put_nowait(_END)

    workers = [asyncio.create_task(worker()) for _ in range(min(policy.per_file, len(starts)))]
    try:
        for index, queue in enumerate(queues):
            while (item := await queue.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                assert isinstance(item, bytes)
                yield item
            held.discard(index)
            budget.tickets.release()
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for _ in held:
            budget.tickets.release()
