"""How the CLI shows an import moving: bars on a terminal, plain lines elsewhere."""

from __future__ import annotations

import sys
import time
from typing import Never, TextIO

from tqdm import tqdm

from .model import ArtifactStorageImportStep, FileState, ProgressEvent
from .units import human_bytes


class _Totals:
    """Bytes of the first pass over each file: what the source has sent so far."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.done: dict[str, int] = {}

    def update(self, event: ProgressEvent) -> int:
        """Record ``event``; return how many new source bytes it reports."""
        if event.state is FileState.QUEUED:
            self.sizes[event.path] = event.bytes_total or 0
            return 0
        if event.state is FileState.RUNNING and event.step is ArtifactStorageImportStep.DOWNLOAD:
            delta = event.bytes_done - self.done.get(event.path, 0)
            self.done[event.path] = event.bytes_done
            return max(delta, 0)
        return 0

    @property
    def total(self) -> int:
        return sum(self.sizes.values())


class BarProgress:
    """An overall bar with throughput and ETA, and one bar per file in flight."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._totals = _Totals()
        self._overall: tqdm[Never] | None = None
        self._files: dict[str, tqdm[Never]] = {}

    def __call__(self, event: ProgressEvent) -> None:
        new = self._totals.update(event)
        if event.state is FileState.QUEUED:
            if self._overall is None:
                self._overall = self._bar("total", 0, leave=True)
            self._overall.total = self._totals.total
            self._overall.refresh()
            return
        if event.state is FileState.RUNNING:
            bar = self._files.get(event.path)
            if bar is None or event.bytes_done == 0:
                if bar is not None:
                    bar.close()
                label = (
                    event.path if event.step is ArtifactStorageImportStep.DOWNLOAD else f"{event.path} [{event.step}]"
                )
                bar = self._files[event.path] = self._bar(label, event.bytes_total, leave=False)
            bar.update(event.bytes_done - bar.n)
        elif event.state in (FileState.VERIFIED, FileState.FAILED):
            bar = self._files.pop(event.path, None)
            if bar is not None:
                bar.close()
        if new and self._overall is not None:
            self._overall.update(new)

    def _bar(self, desc: str, total: int | None, *, leave: bool) -> tqdm[Never]:
        short = desc if len(desc) <= 40 else "…" + desc[-39:]
        bar: tqdm[Never] = tqdm(
            desc=short,
            total=total,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self._stream,
            dynamic_ncols=True,
            leave=leave,
        )
        return bar

    def close(self) -> None:
        for bar in self._files.values():
            bar.close()
        self._files.clear()
        if self._overall is not None:
            self._overall.close()
            self._overall = None


class LineProgress:
    """One line per verified file, for logs and pipes (a failure is the CLI's final error line)."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self._stream = stream
        self._totals = _Totals()
        self._started = time.monotonic()
        self._received = 0
        self._finished = 0

    def __call__(self, event: ProgressEvent) -> None:
        self._received += self._totals.update(event)
        if event.state is FileState.SKIPPED:
            print(f"already present, skipped: {event.path}", file=self._stream, flush=True)
        elif event.state is FileState.RESUMED:
            print(f"kept from an interrupted import: {event.path}", file=self._stream, flush=True)
        elif event.state is FileState.VERIFIED:
            self._finished += 1
            elapsed = max(time.monotonic() - self._started, 1e-6)
            print(
                f"verified [{self._finished}/{len(self._totals.sizes)}] {event.path} "
                f"({human_bytes(event.bytes_total or 0)}; {human_bytes(self._received / elapsed)}/s overall)",
                file=self._stream,
                flush=True,
            )

    def close(self) -> None:
        pass
