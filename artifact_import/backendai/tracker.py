"""Per-file progress through the storage proxy's download tracker (its Valkey client), as its manager reads it.

The import never waits for the tracker: progress events only record each
file's latest state, and one task sends them, at most one update per file
per ``interval``. A tracker that fails is logged, never fails the import.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from ..model import ArtifactFile, FileState, ModelTarget, ProgressEvent, ResolvedArtifact
from ..redact import redact_text
from ..registries.base import AbstractRegistry

log = logging.getLogger(__name__)

#: States after which a file's bytes are all received and verified.
_RECEIVED = frozenset({FileState.VERIFIED, FileState.DONE, FileState.SKIPPED, FileState.RESUMED})


class DownloadTrackingClient(Protocol):
    """What is used of their ``ValkeyArtifactDownloadTrackingClient``."""

    async def init_artifact_download(
        self, model_id: str, revision: str, file_info_list: list[tuple[str, int]]
    ) -> Any: ...

    async def update_file_progress(
        self,
        model_id: str,
        revision: str,
        file_path: str,
        current_bytes: int,
        total_bytes: int,
        success: bool = False,
        error_message: str | None = None,
    ) -> Any: ...


class DownloadTracker:
    """The files of one import (``model_id`` at ``revision`` as the request named them) on ``client``."""

    def __init__(self, client: DownloadTrackingClient, model_id: str, revision: str, *, interval: float = 1.0) -> None:
        self._client = client
        self._model_id = model_id
        self._revision = revision
        self._interval = interval
        self._sizes: dict[str, int] = {}
        #: The latest state of each file not yet sent.
        self._pending: dict[str, ProgressEvent] = {}
        self._succeeded: set[str] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None

    async def start(self, files: Sequence[ArtifactFile]) -> None:
        """Register every file of the import at 0 bytes, and start sending progress."""
        self._sizes = {f.path: f.size or 0 for f in files}
        await self._call(self._client.init_artifact_download(self._model_id, self._revision, list(self._sizes.items())))
        self._worker = asyncio.create_task(self._run(), name=f"download-tracker:{self._model_id}")

    def on_progress(self, event: ProgressEvent) -> None:
        if event.state is FileState.QUEUED:
            return  # registered at 0 bytes already
        self._pending[event.path] = event
        self._wake.set()

    async def aclose(self, error: BaseException | None = None) -> None:
        """Send what is left; with ``error`` (the import failed), files sent as received are sent again as not
        kept, so that the tracker does not show them complete."""
        self._closing = True
        self._stop.set()
        self._wake.set()
        if self._worker is not None:
            with contextlib.suppress(Exception):
                await self._worker
        await self._send_pending()
        if error is not None:
            reason = redact_text(f"not kept: the import failed ({error})")
            for path in sorted(self._succeeded):
                size = self._sizes.get(path, 0)
                await self._update(path, size, size, False, reason)

    async def _run(self) -> None:
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            await self._send_pending()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self._interval)

    async def _send_pending(self) -> None:
        events, self._pending = self._pending, {}
        for path, event in events.items():
            total = event.bytes_total if event.bytes_total is not None else self._sizes.get(path, 0)
            received = event.state in _RECEIVED
            if received:
                self._succeeded.add(path)
            else:
                self._succeeded.discard(path)
            error = redact_text(event.error) if event.error else None
            await self._update(path, total if received else event.bytes_done, total, received, error)

    async def _update(self, path: str, current: int, total: int, success: bool, error: str | None) -> None:
        await self._call(
            self._client.update_file_progress(
                model_id=self._model_id,
                revision=self._revision,
                file_path=path,
                current_bytes=current,
                total_bytes=total,
                success=success,
                error_message=error,
            )
        )

    async def _call(self, call: Any) -> None:
        try:
            await call
        except Exception as exc:
            log.warning("download tracker of %s: %s", self._model_id, redact_text(str(exc)))


class TrackedRegistry(AbstractRegistry):
    """``registry``, telling ``tracker`` the files of the artifact once it is listed."""

    def __init__(self, registry: AbstractRegistry, tracker: DownloadTracker) -> None:
        self.inner = registry
        self.name = registry.name
        self.scheme = registry.scheme
        self._tracker = tracker

    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        artifact = await self.inner.resolve(model)
        await self._tracker.start(artifact.files)
        return artifact

    def open(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        return self.inner.open(artifact, file, offset)

    async def aclose(self) -> None:
        await self.inner.aclose()
