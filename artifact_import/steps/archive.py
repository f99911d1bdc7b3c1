"""ARCHIVE: bytes into the destination's pending writes, which the journal commits together, or none."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from .._aio import run_to_completion
from ..model import ArtifactFile, ArtifactStorageImportStep
from ..storages.base import AbstractStorage, PendingWrite
from ..streams import closing

log = logging.getLogger(__name__)


class ArchiveStep:
    step_type = ArtifactStorageImportStep.ARCHIVE

    async def write(
        self,
        storage: AbstractStorage,
        path: str,
        chunks: AsyncIterator[bytes],
        file: ArtifactFile,
        *,
        pending: PendingWrite | None = None,
        keep: Callable[[PendingWrite, BaseException], Awaitable[bool]] | None = None,
    ) -> PendingWrite:
        """Drain ``chunks`` (the bytes of ``file``) into a pending write of ``path`` (or into ``pending``).

        On any error the write is aborted, unless ``keep`` takes it (parks
        the bytes so far for a later import) and answers True.
        """
        if pending is None:
            pending = await storage.open_write(path, size_hint=file.size, sha256=file.sha256)
        try:
            async with closing(chunks):
                async for chunk in chunks:
                    await pending.write(chunk)
            await pending.flush()
        except BaseException as exc:
            write, error = pending, exc

            async def end() -> None:
                if keep is None or not await keep(write, error):
                    await write.abort()

            # One shielded step: a cancellation arriving between keep and abort must not skip the abort.
            await run_to_completion(end())
            raise
        return pending

    async def abort_all(self, pending: Sequence[PendingWrite]) -> None:
        for write in pending:
            try:
                await write.abort()
            except Exception:
                log.exception("%s: cleanup failed", write.path)
