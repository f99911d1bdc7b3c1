"""Appending a file's bytes to a descriptor: straight to the disk where the filesystem allows it.

A buffered ``write`` copies every byte into the page cache and the kernel
writes it out later; on the machines we measure that copy cost more CPU than
receiving the bytes, and varied between 0.9 and 2.8 CPU-seconds per GiB
(``benchmarks/README.md``). With ``O_DIRECT`` the disk reads the bytes from
our buffer: no copy, no page cache filled with a model nobody reads back, and
each byte durable when its write returns, so the fsync before the rename only
has the metadata left to flush.

``O_DIRECT`` wants buffers, sizes and file offsets aligned to the device's
blocks: chunks are copied into one of two page-aligned staging blocks (one
is filled on the event loop while the other is written in a thread) and
written whole; the tail of the file, shorter than a block, is written
without ``O_DIRECT``. A filesystem that refuses ``O_DIRECT`` (tmpfs, some
FUSE and network filesystems) at open or at the first write gets the
buffered path, where writeback is started every :data:`WRITEBACK_WINDOW`
bytes so that the fsync waits only for the tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Callable
from typing import Any

from .._aio import run_to_completion

#: Alignment O_DIRECT is held to: the page size is a multiple of every block size in use.
ALIGN = mmap.PAGESIZE
#: One staging block; two per file being written.
BLOCK = 2 << 20
#: Files smaller than this are written through the page cache: a few blocks gain nothing from O_DIRECT.
DIRECT_MIN = 8 << 20
#: Buffered writes: every this many bytes the disk is told to start writing them.
WRITEBACK_WINDOW = 16 << 20
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class FileSink:
    """Appends to ``fd`` (positioned at ``offset``, its end); :meth:`close` makes it durable or not."""

    def __init__(self, fd: int, offset: int = 0, *, direct: bool = True) -> None:
        self.fd = fd
        #: Bytes handed to :meth:`write` and not yet on their way to the file (in a staging block).
        self._fill = 0
        self._written = offset
        self._written_back = offset
        self._blocks: list[mmap.mmap] = []
        self._current = 0
        self._inflight: asyncio.Future[None] | None = None
        #: Staging blocks written whole (O_DIRECT on), rather than each chunk as it comes (buffered).
        self.staged = bool(direct and _O_DIRECT and offset % ALIGN == 0 and _set_direct(fd, True))
        #: O_DIRECT still on: turned off (in the writing thread) by a filesystem that refuses it at write.
        self._o_direct = self.staged
        if self.staged:
            self._blocks = [mmap.mmap(-1, BLOCK), mmap.mmap(-1, BLOCK)]

    async def write(self, chunk: bytes) -> None:
        if not self.staged:
            self._start(self._write_buffered, chunk)
            await self._wait()
            return
        view = memoryview(chunk)
        at = 0
        while at < len(view):
            block = self._blocks[self._current]
            take = min(BLOCK - self._fill, len(view) - at)
            block[self._fill : self._fill + take] = view[at : at + take]
            self._fill += take
            at += take
            if self._fill == BLOCK:
                await self._submit()

    async def _submit(self) -> None:
        """Start writing the full block, after the one before it is written; go on filling the other."""
        await self._wait()
        block, length = self._blocks[self._current], self._fill
        self._current ^= 1
        self._fill = 0
        self._start(self._write_block, block, length)

    def _start(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` in a thread; :meth:`close` waits for it, whatever cancels the task that started it."""
        self._inflight = asyncio.get_running_loop().run_in_executor(None, work, *args)

    def _write_buffered(self, chunk: bytes) -> None:
        _write_all(self.fd, chunk)
        self._written += len(chunk)
        if self._written - self._written_back >= WRITEBACK_WINDOW:
            start, self._written_back = self._written_back, self._written
            _start_writeback(self.fd, start, self._written - start)

    def _write_block(self, block: mmap.mmap, length: int) -> None:
        with memoryview(block) as view:
            data = view[:length]
            try:
                _write_all(self.fd, data)
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._o_direct:
                    raise
                # Accepted at open, refused at write (some FUSE filesystems): the rest goes through the cache.
                self._o_direct = False
                _set_direct(self.fd, False)
                _write_all(self.fd, data)
            finally:
                data.release()
        self._written += length
        if not self._o_direct and self._written - self._written_back >= WRITEBACK_WINDOW:
            start, self._written_back = self._written_back, self._written
            _start_writeback(self.fd, start, self._written - start)

    async def _wait(self) -> None:
        inflight = self._inflight
        if inflight is not None:
            try:
                await asyncio.shield(inflight)
            finally:
                if inflight.done():
                    self._inflight = None

    async def flush(self) -> None:
        """Every byte written to the file (not yet fsynced)."""
        if not self._blocks:
            return
        await self._wait()
        if self._fill:
            block, length = self._blocks[self._current], self._fill
            self._fill = 0
            self._start(self._write_tail, block, length)
            await self._wait()

    def _write_tail(self, block: mmap.mmap, length: int) -> None:
        aligned = length - length % ALIGN if self._o_direct else 0
        if aligned:
            self._write_block(block, aligned)
        if length > aligned:
            if self._o_direct:
                _set_direct(self.fd, False)  # the file's last, partial block cannot go direct
                self._o_direct = False
            with memoryview(block) as view:
                rest = view[aligned:length]
                try:
                    _write_all(self.fd, rest)
                finally:
                    rest.release()
            self._written += length - aligned

    async def close(self) -> None:
        """Close the descriptor (after a write still running in its thread, never under it)."""
        if self.fd < 0:
            return
        inflight, self._inflight = self._inflight, None
        if inflight is not None:
            await run_to_completion(_settle(inflight))
        fd, self.fd = self.fd, -1
        os.close(fd)
        for block in self._blocks:
            block.close()
        self._blocks = []


async def _settle(future: asyncio.Future[None]) -> None:
    with contextlib.suppress(Exception):
        await future


def _set_direct(fd: int, on: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for ``fd``; False where the filesystem refuses it."""
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))
    except OSError:
        return False
    return True


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        view.release()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing ``[offset, offset+length)`` to disk now, without waiting for it.

    Linux's ``POSIX_FADV_DONTNEED`` starts writeback of dirty pages (and drops them from the cache once
    clean, so a 50 GB import does not push everything else out of memory). Without it the kernel would
    write lazily and the fsync before the rename would wait for the whole file; with it, the disk works
    while the network does, and the fsync waits only for the tail.
    """
    with contextlib.suppress(OSError, AttributeError):
        os.posix_fadvise(fd, offset, length, os.POSIX_FADV_DONTNEED)
