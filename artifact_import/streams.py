"""Chunk streams: re-chunking, bounded read-ahead, hashing off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import queue
import threading
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

#: Chunks moved between stages. Memory of one file in flight is a small multiple of this.
DEFAULT_CHUNK_SIZE = 1 << 20

#: Below this a hash update is cheaper on the loop than a hop to a thread.
_THREAD_HASH_MIN = 256 << 10


@contextlib.asynccontextmanager
async def closing(chunks: AsyncIterable[Any]) -> AsyncIterator[None]:
    """Close ``chunks`` when the block ends, however it ends.

    An ``async for`` left by an exception or a ``break`` does not close its
    generator; every stage that wraps another closes it, so that abandoning
    the outermost stream releases the HTTP response or file at the bottom.
    """
    try:
        yield
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def rechunk(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Coalesce small chunks into chunks of at least ``size`` bytes (the last may be shorter).

    Network reads return whatever the socket had; downstream work (hashing in
    a thread, writing to a file or a multipart part) is cheaper per big chunk.
    Each byte is copied once; a chunk holds less than ``size`` plus one
    incoming chunk.
    """
    parts: list[bytes] = []
    held = 0
    async with closing(chunks):
        try:
            async for chunk in chunks:
                parts.append(chunk)
                held += len(chunk)
                if held >= size:
                    yield parts[0] if len(parts) == 1 else b"".join(parts)
                    parts.clear()
                    held = 0
        except Exception:
            # Hand over what did arrive before the failure: a resumed
            # download then continues after it instead of fetching it again.
            if parts:
                yield b"".join(parts)
            raise
    if parts:
        yield b"".join(parts)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    """A stream of one small, already complete chunk (a manifest, a report)."""
    yield data


_END = object()


async def read_ahead(chunks: AsyncIterable[bytes], depth: int) -> AsyncIterator[bytes]:
    """Read up to ``depth`` chunks ahead of the consumer, in a task of its own.

    The producer (network) and the consumer (hashing, writing) overlap; the
    bounded queue is the back-pressure. Closing this generator cancels the
    producer, and a producer error is raised to the consumer in order.
    """
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=depth)

    async def produce() -> None:
        try:
            async with closing(chunks):
                async for chunk in chunks:
                    await queue.put(chunk)
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put(exc)
        else:
            await queue.put(_END)

    task = asyncio.create_task(produce())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                break
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Hasher:
    """A hashlib object fed without blocking the event loop on large chunks.

    hashlib releases the GIL for large buffers, so a thread hop lets hashing
    run on another core while the loop receives and writes.
    """

    def __init__(self, algorithm: str, prefix: bytes = b"") -> None:
        self._h = hashlib.new(algorithm)
        if prefix:
            self._h.update(prefix)

    async def update(self, chunk: bytes) -> None:
        if len(chunk) >= _THREAD_HASH_MIN:
            await asyncio.to_thread(self._h.update, chunk)
        else:
            self._h.update(chunk)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class DigestWorker:
    """Hashes fed to a thread of their own, chunk after chunk, without a round trip through the loop for each.

    A hop to the loop's executor per chunk (:class:`Hasher`) costs a future,
    a wake-up of the loop and a fight for the GIL each time: measured, about
    0.3 CPU-seconds per GiB on top of the hashing itself. Here the loop puts
    each chunk on a queue and goes on; the thread updates every hash with it.
    The loop waits only when :data:`_QUEUED` chunks are still unhashed (the
    memory this holds) and at :meth:`finish`. Chunks under
    ``_THREAD_HASH_MIN`` are hashed on the loop until a large one starts the
    thread (a small file never starts one).
    """

    _QUEUED = 4

    def __init__(self, hashes: list[Any]) -> None:
        self.hashes = hashes
        self._queue: queue.SimpleQueue[bytes | None] | None = None
        self._slots = threading.Semaphore(self._QUEUED)
        self._lock = threading.Lock()
        self._waiter: asyncio.Future[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    async def update(self, chunk: bytes) -> None:
        if self._queue is None:
            if len(chunk) < _THREAD_HASH_MIN:
                for h in self.hashes:
                    h.update(chunk)
                return
            self._start()
        assert self._queue is not None
        while not self._slots.acquire(blocking=False):
            waiter = asyncio.get_running_loop().create_future()
            with self._lock:
                self._waiter = waiter
            if self._slots.acquire(blocking=False):  # freed between the two looks
                with self._lock:
                    self._waiter = None
                break
            await waiter
        self._queue.put(chunk)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._queue = queue.SimpleQueue()
        self._done = loop.create_future()
        threading.Thread(target=self._run, args=(loop,), name="digest", daemon=True).start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._queue is not None
        try:
            while (chunk := self._queue.get()) is not None:
                for h in self.hashes:
                    h.update(chunk)
                self._slots.release()
                with self._lock:
                    waiter, self._waiter = self._waiter, None
                if waiter is not None:
                    loop.call_soon_threadsafe(_settle, waiter)
        except BaseException as exc:  # pragma: no cover - hashlib does not fail on bytes
            self._error = exc
        finally:
            with self._lock:
                waiter, self._waiter = self._waiter, None
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                if waiter is not None:
                    loop.call_soon_threadsafe(_settle, waiter)
                assert self._done is not None
                loop.call_soon_threadsafe(_settle, self._done)

    async def finish(self) -> None:
        """Every chunk fed is hashed: the digests can be read."""
        if self._queue is None or self._done is None:
            return
        self._queue.put(None)
        await asyncio.shield(self._done)
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """The file is abandoned: the thread ends after what it was given (it holds nothing else)."""
        if self._queue is not None:
            self._queue.put(None)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def git_blob_prefix(size: int) -> bytes:
    """The header git hashes before a blob's content to form its sha1."""
    return b"blob %d\x00" % size
