"""The bars an import draws on a terminal: an overall bar and one per file in flight (tqdm)."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import sys
from collections.abc import Callable
from typing import Any, Never, TextIO

from tqdm import tqdm

from .model import ArtifactStorageImportStep, FileState, ProgressEvent
from .progress import Totals
from .units import human_bytes


class _ByteBar(tqdm):  # type: ignore[type-arg]
    """A tqdm bar whose sizes and rate are in the units of every other message (KiB, MiB, GiB).

    tqdm scales the counts by ``unit_divisor`` but the rate always by 1000, so a 1024 divisor
    shows MiB labelled "MB" next to a rate in MB/s; here both come from :func:`human_bytes`.
    """

    @staticmethod
    def format_meter(  # type: ignore[override]
        n: float, total: float | None, elapsed: float, rate: float | None = None, **kwargs: Any
    ) -> str:
        initial = kwargs.get("initial", 0) or 0
        if rate is None and elapsed:
            rate = (n - initial) / elapsed
        size = f"{human_bytes(n)}/{human_bytes(total)}" if total else human_bytes(n)
        speed = f"{human_bytes(rate)}/s" if rate else "?/s"
        kwargs["bar_format"] = (
            "{l_bar}{bar}| " + size + " [{elapsed}<{remaining}, " + speed + "]"
            if total
            else "{desc}: " + size + " [{elapsed}, " + speed + "]"
        )
        return str(tqdm.format_meter(n, total, elapsed, rate=rate, **kwargs))  # type: ignore[arg-type]


class BarProgress:
    """An overall bar with the file count, throughput and ETA, and one bar per file in flight.

    While it is open, log records are written above the bars (``logging_redirect_tqdm``) instead of
    through them.
    """

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._stream = stream
        self._totals = Totals()
        self._overall: tqdm[Never] | None = None
        self._files: dict[str, tqdm[Never]] = {}
        self._logging = contextlib.ExitStack()
        self._logging.enter_context(logging_redirect_tqdm(tqdm_class=_ByteBar))
        self._logging.callback(_quiet_control_keys(stream))

    def __call__(self, event: ProgressEvent) -> None:
        new = self._totals.update(event)
        if event.state is FileState.QUEUED:
            if self._overall is None:
                self._overall = self._bar(self._totals.files, 0, leave=True)
            self._overall.total = self._totals.total
            self._overall.set_description_str(self._totals.files, refresh=False)
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
            if self._overall is not None:
                self._overall.set_description_str(self._totals.files)
        if new and self._overall is not None:
            self._overall.update(new)

    def _bar(self, desc: str, total: int | None, *, leave: bool) -> tqdm[Never]:
        short = desc if len(desc) <= 40 else "…" + desc[-39:]
        bar: tqdm[Never] = _ByteBar(
            desc=short,
            total=total,
            unit="B",
            file=self._stream,
            leave=leave,
            **self._width,
        )
        return bar

    @functools.cached_property
    def _width(self) -> dict[str, Any]:
        # A terminal that reports no size (a fresh pseudo-terminal: some CI runners, `docker exec -t`)
        # would get no bars at all (tqdm hides bars below its row count, 0 there): COLUMNS/LINES, else 80x24.
        try:
            columns = os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, OSError, ValueError):
            columns = 0
        if columns:
            return {"dynamic_ncols": True}
        fallback = shutil.get_terminal_size()
        return {"ncols": fallback.columns, "nrows": fallback.lines}

    def close(self) -> None:
        for bar in self._files.values():
            bar.close()
        self._files.clear()
        if self._overall is not None:
            self._overall.close()
            self._overall = None
        self._logging.close()


def _quiet_control_keys(stream: TextIO) -> Callable[[], None]:
    """Stop the terminal echoing ``^C`` while the bars are drawn; the function that restores it.

    The terminal writes ``^C`` where the cursor is, at the end of a full-width bar: the line wraps, and
    tqdm, whose redraws count lines, draws the overall bar a second time below and can leave a file bar
    behind. Ctrl-C itself still works (only its echo is off).
    """
    try:
        import termios

        fd = stream.fileno()
        saved = termios.tcgetattr(fd)
    except (ImportError, AttributeError, OSError, ValueError):
        return lambda: None
    quiet = list(saved)
    quiet[3] = saved[3] & ~termios.ECHOCTL
    try:
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    except (OSError, termios.error):
        return lambda: None

    def restore() -> None:
        with contextlib.suppress(OSError, termios.error):
            termios.tcsetattr(fd, termios.TCSANOW, saved)

    return restore
