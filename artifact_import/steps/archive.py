"""ARCHIVE: bytes into the destination's pending writes; all commit together, or none."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import attrs

from .._aio import run_to_completion
from ..intent import drop_intent, record_intent
from ..manifest import MANIFEST_PATH, build_manifest, encode_manifest
from ..model import ArtifactFile, ArtifactStorageImportStep, FileResult, ResolvedArtifact
from ..storages.base import AbstractStorage, PendingWrite
from ..streams import closing, one_chunk

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

    async def commit_all(
        self,
        storage: AbstractStorage,
        pending: Sequence[PendingWrite],
        artifact: ResolvedArtifact,
        files: Sequence[FileResult],
    ) -> str:
        """Make every verified file visible, then the manifest that vouches for them.

        The manifest's bytes are written first, so that a destination that
        cannot take them (full, gone) fails the import before any file is
        visible; it is committed last, so that a destination with a manifest
        holds every file it lists.
        """
        stamps = {write.path: write.stamp for write in pending if write.stamp is not None}
        files = [attrs.evolve(f, stamp=stamps.get(f.path, f.stamp)) for f in files]
        body = encode_manifest(build_manifest(artifact, files))
        manifest = await self.write(storage, MANIFEST_PATH, one_chunk(body), ArtifactFile(MANIFEST_PATH, len(body)))
        # Where a commit is a series of moves, the moves and the manifest are recorded first: a process killed
        # among them is completed by whoever comes next (see ..intent), never left half visible.
        journaled = False
        try:
            journals = [await write.prepare_commit() for write in pending]
            journaled = bool(pending) and all(journal is not None for journal in journals)
            if journaled:
                await record_intent(storage, [(str(j), w.path) for j, w in zip(journals, pending, strict=True)], body)
            await _commit_each(pending)
            await manifest.commit()
        except BaseException:
            await run_to_completion(manifest.abort())
            if journaled:
                await run_to_completion(drop_intent(storage))
            raise
        if journaled:
            await drop_intent(storage)
        return MANIFEST_PATH

    async def abort_all(self, pending: Sequence[PendingWrite]) -> None:
        for write in pending:
            try:
                await write.abort()
            except Exception:
                log.exception("%s: cleanup failed", write.path)


#: Commits made at once: on object storage each is a request (a completion, a copy), worth overlapping.
COMMIT_CONCURRENCY = 8


async def _commit_each(pending: Sequence[PendingWrite]) -> None:
    """Commit every write, several at a time; the first failure is raised once none is still running."""
    limit = asyncio.Semaphore(COMMIT_CONCURRENCY)

    async def one(write: PendingWrite) -> None:
        async with limit:
            await write.commit()

    outcomes = await asyncio.gather(*(one(w) for w in pending), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
