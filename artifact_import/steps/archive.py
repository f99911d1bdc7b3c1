"""ARCHIVE: bytes into the destination's pending writes; all commit together, or none."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence

from .._aio import run_to_completion
from ..manifest import MANIFEST_PATH, build_manifest, encode_manifest
from ..model import ArtifactFile, ArtifactStorageImportStep, FileResult, ResolvedArtifact
from ..storages.base import AbstractStorage, PendingWrite
from ..streams import closing, one_chunk

log = logging.getLogger(__name__)


class ArchiveStep:
    step_type = ArtifactStorageImportStep.ARCHIVE

    async def write(
        self, storage: AbstractStorage, path: str, chunks: AsyncIterator[bytes], file: ArtifactFile
    ) -> PendingWrite:
        """Drain ``chunks`` (the bytes of ``file``) into a pending write of ``path``; abort it on any error."""
        pending = await storage.open_write(path, size_hint=file.size, sha256=file.sha256)
        try:
            async with closing(chunks):
                async for chunk in chunks:
                    await pending.write(chunk)
        except BaseException:
            await run_to_completion(pending.abort())
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
        body = encode_manifest(build_manifest(artifact, files))
        manifest = await self.write(storage, MANIFEST_PATH, one_chunk(body), ArtifactFile(MANIFEST_PATH, len(body)))
        try:
            for write in pending:
                await write.commit()
            await manifest.commit()
        except BaseException:
            await run_to_completion(manifest.abort())
            raise
        return MANIFEST_PATH

    async def abort_all(self, pending: Sequence[PendingWrite]) -> None:
        for write in pending:
            try:
                await write.abort()
            except Exception:
                log.exception("%s: cleanup failed", write.path)
