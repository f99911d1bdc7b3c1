"""Blocking byte readers for the content scanners, which run in a thread.

A scanner *pulls* bytes (read a header, skip a tensor, read a line) while the
import *pushes* chunks as they arrive. :class:`ChunkFeed` joins the two through
a bounded queue; the other readers are views over a parent reader (one zip
member, a decompressed stream). Every reader keeps a block and an offset into
it, so reading or skipping N bytes costs O(N) whatever the chunking: never a
growing byte string, never a copy of what is skipped.
"""

from __future__ import annotations

import bz2
import lzma
import queue
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

#: Blocks handed out by the readers built on another reader.
BLOCK = 1 << 20
#: CPU seconds one thread of a file's scan may spend (a scan mostly waits for bytes; this ends the crafted files
#: that keep a core busy for the length of a download or longer).
MAX_CPU_SECONDS = 600.0
#: Decompressed bytes per byte of the file: just above what deflate itself can reach (1032:1), so one layer of
#: gzip, zlib or zip never meets it, while bz2, xz or nested layers of zeros (bombs) do.
EXPAND_RATIO = 1100
#: Decompressed bytes a file may always reach, whatever its size.
EXPAND_FLOOR = 64 << 20
#: Decompressed bytes a file may never pass, whatever its size.
EXPAND_LIMIT = 256 << 30


class Unscannable(Exception):
    """The scanner cannot account for every byte a loader would read: a failed verdict, never "clean"."""


class Bound(Unscannable):
    """One of the scanner's own bounds was reached: refused, naming the bound, never passed unread."""


class Budget:
    """What one file's scan may spend: CPU time per thread, and decompressed bytes against the file's bytes.

    Readers find the budget of the scan they serve through a thread-local, set by each thread a scan runs in.
    """

    _local = threading.local()

    def __init__(
        self,
        *,
        cpu_seconds: float = MAX_CPU_SECONDS,
        ratio: int = EXPAND_RATIO,
        floor: int = EXPAND_FLOOR,
        limit: int = EXPAND_LIMIT,
    ) -> None:
        self.cpu_seconds = cpu_seconds
        self.ratio, self.floor, self.limit = ratio, floor, limit
        #: Bytes of the file read so far (set by the reader at the bottom of the scan).
        self.source: Reader | None = None
        self.expanded = 0
        self._lock = threading.Lock()

    def enter(self) -> None:
        """Charge the calling thread's work to this budget from now on."""
        Budget._local.budget = self
        Budget._local.cpu0 = time.thread_time()

    @staticmethod
    def leave() -> None:
        Budget._local.budget = None

    @staticmethod
    def current() -> Budget | None:
        return getattr(Budget._local, "budget", None)

    def tick(self) -> None:
        if time.thread_time() - Budget._local.cpu0 > self.cpu_seconds:
            raise Bound(f"the scan took more than {self.cpu_seconds:g} CPU seconds (the scanner's time bound)")

    def expand(self, n: int, kind: str) -> None:
        with self._lock:
            self.expanded += n
            total = self.expanded
        read = self.source.position if self.source is not None else 0
        if total > self.limit:
            raise Bound(f"{kind} data expands past {self.limit} bytes (the scanner's decompression bound)")
        if total > self.floor + self.ratio * read:
            raise Bound(
                f"{kind} data expands to {total} bytes from {read} bytes of the file, more than "
                f"{self.ratio}:1 (the scanner's decompression ratio bound)"
            )


class Reader:
    """Bytes in order from ``_next_block``; ``position`` counts the bytes consumed."""

    def __init__(self) -> None:
        self._block = b""
        self._pos = 0
        self._ended = False
        self.position = 0

    def _next_block(self) -> bytes | None:
        raise NotImplementedError

    def _fill(self) -> bool:
        while self._pos >= len(self._block):
            if self._ended:
                return False
            budget = Budget.current()
            if budget is not None:
                budget.tick()
            block = self._next_block()
            if block is None:
                self._ended = True
                self._block, self._pos = b"", 0
                return False
            self._block, self._pos = block, 0
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end."""
        if n <= 0 or not self._fill():
            return b""
        if len(self._block) - self._pos >= n:
            out = self._block[self._pos : self._pos + n]
            self._pos += n
            self.position += n
            return out
        parts: list[bytes] = []
        need = n
        while need > 0 and self._fill():
            part = self._block[self._pos : self._pos + need]
            self._pos += len(part)
            need -= len(part)
            parts.append(part)
        out = b"".join(parts)
        self.position += len(out)
        return out

    def read_some(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current block alone (no joining): empty only at the end."""
        if not self._fill():
            return b""
        take = min(n, len(self._block) - self._pos)
        out = self._block[self._pos : self._pos + take]
        self._pos += take
        self.position += take
        return out

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read(n)
        if len(data) < n:
            raise EOFError(f"truncated: {what} needs {n} bytes, {len(data)} left")
        return data

    def readline(self, limit: int) -> tuple[bytes, bool]:
        """Up to and including the next ``\\n`` (or to the end), and whether that is the whole line.

        Past ``limit`` bytes the rest of the line is passed over, not kept: the first ``limit`` bytes come back.
        """
        parts: list[bytes] = []
        total = 0
        whole = True
        while self._fill():
            end = self._block.find(b"\n", self._pos)
            stop = len(self._block) if end < 0 else end + 1
            part = self._block[self._pos : stop]
            self._pos = stop
            self.position += len(part)
            if whole and total + len(part) > limit:
                parts.append(part[: limit - total])
                whole = False
            elif whole:
                parts.append(part)
            total += len(part)
            if end >= 0:
                break
        return b"".join(parts), whole

    def skip(self, n: int) -> int:
        """Pass over ``n`` bytes (fewer at the end) without copying them; returns how many."""
        done = 0
        while done < n and self._fill():
            step = min(n - done, len(self._block) - self._pos)
            self._pos += step
            done += step
        self.position += done
        return done

    def drain(self) -> int:
        """Pass over everything that is left."""
        done = 0
        while self._fill():
            done += len(self._block) - self._pos
            self._pos = len(self._block)
        self.position += done
        return done

    def unread(self, data: bytes) -> None:
        """Put ``data`` (the bytes just read) back in front."""
        if not data:
            return
        n = len(data)
        self.position -= n
        if n <= self._pos and self._block[self._pos - n : self._pos] == data:
            self._pos -= n  # still in the block (a peek): step back rather than copy the block
            return
        self._block = data + self._block[self._pos :]
        self._pos = 0

    def peek(self, n: int) -> bytes:
        data = self.read(n)
        self.unread(data)
        return data


class Abandoned(Exception):
    """The file was abandoned while its scanner waited for bytes."""


class ChunkFeed(Reader):
    """Chunks put in by the event loop (``b""`` ends the stream); ``on_take`` runs after each is taken."""

    def __init__(self, on_take: Callable[[], None], abandoned: Callable[[], bool], depth: int = 4) -> None:
        super().__init__()
        self.chunks: queue.Queue[bytes] = queue.Queue(maxsize=depth)
        self._on_take = on_take
        self._abandoned = abandoned

    def _next_block(self) -> bytes | None:
        while True:
            try:
                chunk = self.chunks.get(timeout=0.2)
            except queue.Empty:
                if self._abandoned():
                    raise Abandoned from None
                continue
            self._on_take()
            return chunk or None


class BytesReader(Reader):
    """A reader over bytes already in memory (tests, small headers)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data: bytes | None = data

    def _next_block(self) -> bytes | None:
        data, self._data = self._data, None
        return data or None


class Limited(Reader):
    """Exactly the next ``size`` bytes of ``parent``."""

    def __init__(self, parent: Reader, size: int) -> None:
        super().__init__()
        self._parent = parent
        self.left = size

    def _next_block(self) -> bytes | None:
        if self.left <= 0:
            return None
        block = self._parent.read(min(self.left, BLOCK))
        if not block:
            raise EOFError(f"truncated: {self.left} more bytes expected")
        self.left -= len(block)
        return block

    def skip(self, n: int) -> int:
        # What is buffered first, then straight through the parent: skipping a tensor copies nothing.
        done = min(n, len(self._block) - self._pos)
        self._pos += done
        self.position += done
        rest = min(n - done, self.left)
        if rest > 0:
            skipped = self._parent.skip(rest)
            self.left -= skipped
            self.position += skipped
            done += skipped
            if skipped < rest:
                raise EOFError(f"truncated: {self.left} more bytes expected")
        return done

    def drain(self) -> int:
        return self.skip(len(self._block) - self._pos + self.left)


class Decompressed(Reader):
    """The decompressed bytes of a stream read from ``parent``, as Python's readers give them.

    ``bz2``, ``xz``/``lzma`` and ``gzip`` files may hold several streams one after another, which
    ``bz2.open``, ``lzma.open``, ``gzip.open`` and joblib read as one: so are they here. Bytes after the
    last stream that do not start another are put back (the readers ignore them). What a stream expands
    to is charged to the scan's :class:`Budget`: a bomb is refused, not scanned for hours.
    """

    def __init__(self, parent: Reader, kind: str, limit: int | None = None) -> None:
        super().__init__()
        self._parent = parent
        self.kind = kind
        self._limit = limit
        self._made = 0
        self._d = _decompressor(kind)
        self._tail = b""

    def _next_block(self) -> bytes | None:
        while True:
            if self._d.eof:
                rest = self._d.unused_data or (b"" if self.kind in ("zlib", "deflate") else self._parent.read(1 << 16))
                if not rest or not self._next_stream(rest):
                    return None
                continue
            d = self._d
            pending = bool(d.unconsumed_tail) if isinstance(d, _ZLIB) else not d.needs_input
            data = b"" if pending else (self._tail or self._parent.read(1 << 16))
            self._tail = b""
            if not pending and not data:
                raise EOFError(f"truncated {self.kind} stream")
            try:
                if isinstance(d, _ZLIB):
                    out = d.decompress(d.unconsumed_tail if pending else data, BLOCK)
                else:
                    out = d.decompress(data, BLOCK)
            except (zlib.error, OSError, lzma.LZMAError, EOFError) as exc:
                raise Unscannable(f"{self.kind} stream is corrupt ({exc})") from None
            if out:
                self._made += len(out)
                if self._limit is not None and self._made > self._limit:
                    raise Bound(f"{self.kind} stream expands past {self._limit} bytes")
                budget = Budget.current()
                if budget is not None:
                    budget.expand(len(out), self.kind)
                return bytes(out)

    def _next_stream(self, rest: bytes) -> bool:
        """Whether ``rest`` (what follows a finished stream) starts another that the readers would read.

        On False, what is left of ``rest`` is put back in front of the parent.
        """
        if self.kind == "gzip":
            # gzip.open skips zero padding between members, then reads another member or fails.
            while rest and not rest.lstrip(b"\x00"):
                rest = self._parent.read(1 << 16)
            rest = rest.lstrip(b"\x00")
            if rest[:2] != b"\x1f\x8b":
                self._parent.unread(rest)
                return False
        elif self.kind in ("bz2", "xz", "lzma"):
            # As _compression.DecompressReader: a new decompressor over the rest; if its first call fails,
            # the rest is trailing garbage and ignored.
            try:
                _decompressor(self.kind).decompress(rest, 1)
            except (OSError, lzma.LZMAError, EOFError):
                self._parent.unread(rest)
                return False
        else:
            self._parent.unread(rest)
            return False
        self._d = _decompressor(self.kind)
        self._tail = rest
        return True


_ZLIB = type(zlib.decompressobj())


def _decompressor(kind: str) -> Any:
    if kind == "deflate":
        return zlib.decompressobj(-15)
    if kind == "zlib":
        return zlib.decompressobj(15)
    if kind == "gzip":
        return zlib.decompressobj(31)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind in ("xz", "lzma"):
        return lzma.LZMADecompressor()
    raise ValueError(kind)
