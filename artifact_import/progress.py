"""How the CLI shows an import moving: plain lines for logs and pipes (:class:`LineProgress`); the bars drawn
on a terminal are in :mod:`.progressbars`, which loads tqdm, so that an import without a terminal (CI, a pipe,
the benchmarks) does not pay for it."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from .model import ArtifactStorageImportStep, FileState, ProgressEvent
from .units import human_bytes

#: Without a terminal, a progress line at least this often while bytes arrive (CI logs, ``kubectl logs``).
LINE_INTERVAL = 10.0


class Totals:
    """Bytes of the first pass over each file: what the source has sent so far; and files finished."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.finished = 0

    def update(self, event: ProgressEvent) -> int:
        """Record ``event``; return how many new source bytes it reports."""
        if event.state is FileState.QUEUED:
            self.sizes[event.path] = event.bytes_total or 0
            return 0
        if event.state is FileState.VERIFIED:
            self.finished += 1
        if event.state is FileState.RUNNING and event.step is ArtifactStorageImportStep.DOWNLOAD:
            delta = event.bytes_done - self.done.get(event.path, 0)
            self.done[event.path] = event.bytes_done
            return max(delta, 0)
        return 0

    @property
    def total(self) -> int:
        return sum(self.sizes.values())

    @property
    def files(self) -> str:
        return f"{self.finished}/{len(self.sizes)} files"


class LineProgress:
    """Plain lines for logs and pipes: each verified file, and every ``interval`` seconds while bytes
    arrive, how far the import is (a failure is the CLI's final error line)."""

    def __init__(self, stream: TextIO = sys.stderr, *, interval: float = LINE_INTERVAL) -> None:
        self._stream = stream
        self._interval = interval
        self._totals = Totals()
        self._started = time.monotonic()
        self._last_line = self._started
        self._received = 0

    def __call__(self, event: ProgressEvent) -> None:
        self._received += self._totals.update(event)
        if event.state is FileState.SKIPPED:
            self._print(f"already present, skipped: {event.path}")
        elif event.state is FileState.RESUMED:
            self._print(f"kept from an interrupted import: {event.path}")
        elif event.state is FileState.VERIFIED:
            self._print(
                f"verified [{self._totals.finished}/{len(self._totals.sizes)}] {event.path} "
                f"({human_bytes(event.bytes_total or 0)}; {human_bytes(self._rate())}/s overall)"
            )
        elif event.state is FileState.RUNNING and time.monotonic() - self._last_line >= self._interval:
            total = self._totals.total
            rate = self._rate()
            share = f" ({100 * self._received / total:.0f}%)" if total else ""
            eta = f", {_duration((total - self._received) / rate)} left" if total and rate else ""
            self._print(
                f"progress: {human_bytes(self._received)} of {human_bytes(total)}{share}, "
                f"{human_bytes(rate)}/s{eta}; {self._totals.files} done"
            )

    def _rate(self) -> float:
        return self._received / max(time.monotonic() - self._started, 1e-6)

    def _print(self, line: str) -> None:
        self._last_line = time.monotonic()
        print(line, file=self._stream, flush=True)

    def close(self) -> None:
        pass


def _duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
