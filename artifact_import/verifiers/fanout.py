"""One stream read several ways at once, each way in a thread of its own, none buffering the stream.

A file can be read differently by each of its loaders: ``torch.load`` reads a
tar as a tar, ``pickle.load`` the same bytes as a pickle (where a length in the
tar's name field can skip to a payload in a member's data); ``joblib.load``
decompresses a bz2 stream that ``pickle.load`` reads raw. Each reading can
jump ahead by gigabytes, so neither can wait for the other over a buffer:
:func:`fan_out` pumps the stream's blocks to one thread per reading through
small queues, and a reading that is done stops being fed.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from .reader import BLOCK, Budget, Reader

T = TypeVar("T")
_ERROR = object()


class _Stopped(Exception):
    """Another reading already refused the file: this one stops."""


class _Pipe(Reader):
    def __init__(self) -> None:
        super().__init__()
        self.blocks: queue.Queue[object] = queue.Queue(maxsize=4)
        self.done = threading.Event()
        self.error: BaseException | None = None

    def _next_block(self) -> bytes | None:
        if self.error is not None:
            raise self.error
        item = self.blocks.get()
        if item is _ERROR:
            assert self.error is not None
            raise self.error
        assert isinstance(item, bytes)
        return item or None

    def give(self, item: object) -> None:
        """Hand over a block (``b""`` ends the stream), unless this reading finished first."""
        while not self.done.is_set():
            try:
                self.blocks.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.give(_ERROR)


def fan_out(r: Reader, readings: Sequence[Callable[[Reader], T]]) -> list[T]:
    """Run each of ``readings`` over the bytes ``r`` has left; the first to raise decides, the others stop."""
    budget = Budget.current()
    pipes = [_Pipe() for _ in readings]
    results: list[T | None] = [None] * len(readings)
    errors: list[BaseException | None] = [None] * len(readings)

    def run(i: int) -> None:
        if budget is not None:
            budget.enter()
        try:
            results[i] = readings[i](pipes[i])
        except BaseException as exc:
            errors[i] = exc
            for other in pipes:
                if other is not pipes[i] and not other.done.is_set():
                    other.fail(_Stopped())
        finally:
            pipes[i].done.set()

    threads = [threading.Thread(target=run, args=(i,), name="scan reading", daemon=True) for i in range(len(pipes))]
    for t in threads:
        t.start()
    try:
        while not all(p.done.is_set() for p in pipes):
            block = r.read_some(BLOCK)
            for p in pipes:
                p.give(block)
            if not block:
                break
    except BaseException as exc:
        # The stream itself failed (truncated, abandoned): each reading meets that where it reads next, and
        # makes of it what it would have made reading the stream alone.
        for p in pipes:
            p.fail(exc)
    for t in threads:
        t.join()
    real = [e for e in errors if e is not None and not isinstance(e, _Stopped)]
    if real:
        raise real[0]
    return results  # type: ignore[return-value]  # every reading returned
