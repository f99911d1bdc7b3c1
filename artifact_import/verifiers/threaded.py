"""A verifier session whose parser pulls bytes in a thread of its own while the import pushes chunks.

Parsers of nested formats are simplest written as readers (read a header,
skip a member); the import streams. The session starts one thread per file
(not the loop's shared executor, which concurrent files could exhaust while
each waits for bytes the loop cannot hand over), passes chunks through a
bounded queue, and stops taking chunks once the parser is done: what follows
the part of a file that can hold code costs nothing.

A file listed at most :data:`COLLECT_MAX` bytes long is not worth a thread:
its chunks are kept, and the parser reads them all at once in the loop's
executor when the file ends (it never waits for bytes there, so it cannot
hold the executor). Starting a thread per file was most of what a
repository of 200,000 small files cost (``benchmarks/README.md``).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import queue
import threading
from typing import Generic, TypeVar

from ..model import ArtifactFile, Verdict
from .base import VerifierSession
from .reader import Budget, BytesReader, ChunkFeed, Reader

R = TypeVar("R")

#: Files listed at most this long are parsed whole at their end, without a thread of their own.
COLLECT_MAX = 1 << 20


class ThreadedSession(VerifierSession, Generic[R], abc.ABC):
    """Runs :meth:`parse` over the file's bytes in a thread; :meth:`verdict` turns its result into a verdict."""

    def __init__(self, file: ArtifactFile) -> None:
        self.file = file
        self._loop = asyncio.get_running_loop()
        #: The chunks of a small file, parsed at its end (None: a thread parses as the chunks come).
        self._collected: list[bytes] | None = [] if file.size is not None and file.size <= COLLECT_MAX else None
        self._collected_size = 0
        self._space = asyncio.Event()
        self._cancelled = False
        self._done = threading.Event()
        self._feed = ChunkFeed(self._taken, lambda: self._cancelled)
        # The parser's outcome travels as a value, never as the future's exception: a session abandoned
        # after its parser failed (another file failed first) leaves nothing for asyncio to report as
        # "Future exception was never retrieved".
        self._result: asyncio.Future[tuple[R | None, BaseException | None]] = self._loop.create_future()
        if self._collected is None:
            threading.Thread(target=self._run, name=f"verify {file.path[:40]}", daemon=True).start()

    @abc.abstractmethod
    def parse(self, feed: Reader) -> R:
        """Read what the verdict needs (in the session's thread); exceptions go to :meth:`verdict`."""

    @abc.abstractmethod
    def verdict(self, result: R | None, error: BaseException | None) -> Verdict: ...

    def _taken(self) -> None:
        self._loop.call_soon_threadsafe(self._space.set)

    def _run(self) -> None:
        result, error = self._parse_budgeted(self._feed)
        self._finish(result, error)

    def _parse_budgeted(self, reader: Reader) -> tuple[R | None, BaseException | None]:
        # Every parser's CPU time and decompression are bounded, charged against the bytes of this file,
        # in whichever thread parses it.
        budget = Budget()
        budget.source = reader
        budget.enter()
        try:
            return self.parse(reader), None
        except BaseException as exc:
            return None, exc
        finally:
            Budget.leave()

    def _finish(self, result: R | None, error: BaseException | None) -> None:
        self._done.set()

        def settle() -> None:
            self._space.set()
            if not self._result.done():
                self._result.set_result((result, error))

        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits for this verdict
            self._loop.call_soon_threadsafe(settle)

    async def feed(self, chunk: bytes) -> None:
        if self._collected is not None:
            if self._collected_size <= COLLECT_MAX:  # a source sending more is refused by its size check
                self._collected.append(chunk)
                self._collected_size += len(chunk)
            return
        await self._put(chunk)

    async def _put(self, chunk: bytes) -> None:
        while not self._done.is_set():
            try:
                self._feed.chunks.put_nowait(chunk)
                return
            except queue.Full:
                pass
            self._space.clear()
            if self._feed.chunks.full() and not self._done.is_set():
                await self._space.wait()

    async def finish(self) -> Verdict:
        if self._collected is not None:
            data, self._collected = b"".join(self._collected), []
            result, error = await asyncio.to_thread(self._parse_budgeted, BytesReader(data))
        else:
            await self._put(b"")
            result, error = await self._result
        if error is not None and not isinstance(error, Exception):
            raise error  # KeyboardInterrupt, SystemExit in the parser's thread: not a verdict
        return self.verdict(result, error)

    async def cancel(self) -> None:
        if self._collected is not None:
            self._collected = []
            return
        self._cancelled = True
        if not self._result.done():
            # Wait for the thread to notice (it polls), so nothing of this file outlives the import;
            # shielded, so that a second cancellation leaves the outcome to be set, not cancelled.
            await asyncio.shield(self._result)
