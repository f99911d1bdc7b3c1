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

How many connections are used at once adapts (:class:`AdaptiveLimit`):
``connections`` is the ceiling, not the number. A CDN that caps each
connection rewards every connection added; a LAN, a busy CPU or a full disk
does not, and there each connection only costs. So an import starts with a
few, doubles them while the throughput grows about as much as they do,
steps back when it stops growing, and halves them when the source answers
429/5xx or connections fail (as hf_xet's adaptive concurrency does).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
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
    ``min_size`` uses one), and is the most the import uses: it starts with
    ``initial_connections`` and adapts (see the module's docstring). Chosen by
    measurement, see ``benchmarks/README.md``.
    """

    connections: int = 16
    range_size: int = 4 * MiB
    min_size: int = 32 * MiB
    #: At most this many of a file's ranges at once (a file alone still leaves connections to the others).
    per_file: int = 16
    #: Connections at the start; at most ``connections``. Equal to it: no adapting.
    initial_connections: int = 4
    #: Seconds of transfer each decision to add or keep connections is measured over.
    adapt_window: float = 0.2

    @property
    def tickets(self) -> int:
        """Ranges held at once by all files, fetching or waiting to be handed on: memory is this × range_size."""
        return self.connections + 2

    def __attrs_post_init__(self) -> None:
        if self.connections < 1 or self.per_file < 1:
            raise ValueError("connections must be at least 1")
        if self.range_size < 64 * 1024:
            raise ValueError("range_size must be at least 64 KiB")
        if self.initial_connections < 1 or self.adapt_window <= 0:
            raise ValueError("initial_connections must be at least 1 and adapt_window positive")


#: Doubling the connections must bring at least this share of the doubled throughput (+25%) to be kept.
#: Where connections are capped a doubling brings 1.4-1.6x on two busy cores (8 -> 16 against nginx's
#: limit_rate, benchmarks/README.md); where they are not, 0.9-1.1x: the line sits between the two.
_WORTH = 0.25
#: The connections in use (averaged over a window) against the limit, for the limit to be what held it back.
_BUSY = 0.75
#: After connections stopped paying, or errors cut them: seconds before trying more again.
_HOLD_NO_GAIN = 2.0
_HOLD_TROUBLE = 5.0


class AdaptiveLimit:
    """How many connections the files of an import use at once, between 1 and ``ceiling``.

    A semaphore whose size changes: :meth:`acquire` / :meth:`release` around
    each transfer, :meth:`received` for every chunk that arrives,
    :meth:`trouble` for every failure the source may be causing (429, 5xx,
    a dropped or stalled connection). Decisions are taken on windows of
    ``window`` seconds of transfer, only when the limit is what held the
    import back (connections busy and more wanted): doubling while each
    doubling brings at least 25% more throughput (slow start), then, after a
    pause, a quarter more at a time; a step that brings too little is taken
    back. Trouble halves the limit and pauses growth for a while.
    """

    def __init__(self, ceiling: int, *, start: int, window: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ceiling = ceiling
        self.limit = max(1, min(start, ceiling))
        self.window = window
        self._clock = clock
        self.in_use = 0
        #: The most connections ever in use at once.
        self.peak = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._slow_start = True
        self._probe: tuple[int, float] | None = None  # (limit before the step, its throughput)
        self._hold_until = 0.0
        # Windows are timed from the first byte (before it, the wait is for the listing, not the source); the
        # first one after it is not judged either: connections are still opening, threads and buffers starting.
        self._started = False
        self._unjudged = 1
        self._window_start = self._busy_since = self._busy = 0.0
        self._bytes = self._wanted = 0
        self._start_window(clock())
        #: (seconds since the first transfer, new limit, why) of every change, for logs and tests.
        self.changes: list[tuple[float, int, str]] = []
        self._born = clock()

    # --- the semaphore ------------------------------------------------------------------------------------

    async def acquire(self) -> None:
        if self.in_use < self.limit and not self._waiters:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wanted = max(self._wanted, self.in_use + len(self._waiters))
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # granted and cancelled at once: give it back
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def _take(self) -> None:
        self._account()
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        self._wanted = max(self._wanted, self.in_use + len(self._waiters))

    def release(self) -> None:
        self._account()
        self.in_use -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_use < self.limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    # --- measuring and deciding ---------------------------------------------------------------------------

    def _account(self) -> None:
        now = self._clock()
        self._busy += self.in_use * (now - self._busy_since)
        self._busy_since = now

    def _start_window(self, now: float) -> None:
        self._window_start = now
        self._busy_since = now
        self._busy = 0.0
        self._bytes = 0
        self._wanted = self.in_use + len(self._waiters)

    def received(self, nbytes: int) -> None:
        """``nbytes`` arrived from the source."""
        now = self._clock()
        if not self._started:
            self._started = True
            self._start_window(now)
        self._bytes += nbytes
        if now - self._window_start >= self.window:
            self._decide(now)

    def trouble(self) -> None:
        """The source failed a request in a way more connections could be causing: fewer of them."""
        now = self._clock()
        if self.changes and self.changes[-1][2] == "trouble" and now - self._born - self.changes[-1][0] < self.window:
            return  # one cut per burst of failures
        self._probe = None
        self._slow_start = False
        self._hold_until = now + _HOLD_TROUBLE
        self._set(max(1, self.limit // 2), now, "trouble")

    def _decide(self, now: float) -> None:
        self._account()
        elapsed = now - self._window_start
        rate = self._bytes / elapsed
        busy = self._busy / (self.limit * elapsed) >= _BUSY
        wanted_more = self._wanted > self.limit
        if self._unjudged:
            self._unjudged -= 1
        elif self._probe is not None:
            before, before_rate = self._probe
            self._probe = None
            gained = rate >= before_rate * (1 + _WORTH * (self.limit / before - 1))
            if not gained:
                self._slow_start = False
                self._hold_until = now + _HOLD_NO_GAIN
                self._set(before, now, "no gain")
            elif self._slow_start and busy and wanted_more:
                self._grow(rate, now)
        elif busy and wanted_more and now >= self._hold_until:
            self._grow(rate, now)
        self._start_window(now)

    def _grow(self, rate: float, now: float) -> None:
        if self.limit >= self.ceiling:
            self._slow_start = False
            return
        step = self.limit if self._slow_start else max(1, self.limit // 4)
        self._probe = (self.limit, rate)
        self._set(min(self.ceiling, self.limit + step), now, "grow")

    def _set(self, limit: int, now: float, why: str) -> None:
        if limit != self.limit:
            self.limit = limit
            self.changes.append((round(now - self._born, 3), limit, why))
            log.debug("connections: %d (%s)", limit, why)
            self._wake()
        self._start_window(now)


class ConnectionBudget:
    """The connections and the range tickets shared by the files of one import."""

    def __init__(self, policy: ParallelPolicy) -> None:
        self.policy = policy
        #: The source reports every byte as it arrives (``connections.received``) itself; otherwise the
        #: ranges count each chunk they hand on.
        self.metered = False
        self.connections = AdaptiveLimit(
            policy.connections, start=policy.initial_connections, window=policy.adapt_window
        )
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
                if not budget.metered:
                    budget.connections.received(len(chunk))
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
                if not budget.metered:
                    budget.connections.received(len(chunk))
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
                        if not budget.metered:
                            budget.connections.received(len(chunk))
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
