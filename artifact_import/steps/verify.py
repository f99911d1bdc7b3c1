"""VERIFY: every verifier sees every byte as it passes; a failed verdict stops the file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from typing import Any

from ..errors import IntegrityError, VerificationError
from ..model import ArtifactFile, ArtifactStorageImportStep, Verdict
from ..streams import closing
from ..verifiers.base import Verifier
from ..verifiers.checksum import ChecksumVerifier


class VerifyStep:
    """Wraps a chunk stream; the chunks pass through unchanged.

    Verifiers are fed chunk *n* while the consumer (the pending write) handles
    the same chunk, so hashing and writing overlap. After the last chunk the
    verdicts are collected before the stream ends: a consumer that commits
    only after the stream is exhausted can never commit an unverified file.
    """

    step_type = ArtifactStorageImportStep.VERIFY

    def __init__(self, verifiers: Sequence[Verifier] = ()) -> None:
        names = [v.name for v in verifiers]
        # Integrity is not optional: the manifest's sha256 comes from it.
        self.verifiers: tuple[Verifier, ...] = (
            tuple(verifiers) if ChecksumVerifier.name in names else (ChecksumVerifier(), *verifiers)
        )

    async def tap(
        self,
        file: ArtifactFile,
        chunks: AsyncIterator[bytes],
        verdicts: list[Verdict],
        prefix: AsyncIterator[bytes] | None = None,
    ) -> AsyncIterator[bytes]:
        """``chunks`` unchanged, verified on the way; ``prefix`` (the file's first bytes, already
        written by an interrupted import) is fed to the verifiers first and not passed on."""
        sessions = [v.start(file) for v in self.verifiers if v.applies_to(file)]
        feeding: asyncio.Future[Any] | None = None
        try:
            if prefix is not None:
                async with closing(prefix):
                    async for chunk in prefix:
                        await asyncio.gather(*(s.feed(chunk) for s in sessions))
            async with closing(chunks):
                async for chunk in chunks:
                    if feeding is not None:
                        await feeding
                    feeding = asyncio.ensure_future(asyncio.gather(*(s.feed(chunk) for s in sessions)))
                    yield chunk
            if feeding is not None:
                await feeding
                feeding = None
            results = [await s.finish() for s in sessions]
        except BaseException:
            if feeding is not None:
                feeding.cancel()
                await asyncio.wait([feeding])
                if not feeding.cancelled():
                    # gather reports a cancelled child as its exception: take it, so it is not logged as lost.
                    feeding.exception()
            for session in sessions:
                await session.cancel()
            raise
        verdicts.extend(results)
        failed = [v for v in results if not v.ok]
        if failed:
            reasons = "; ".join(f"{v.verifier}: {v.detail}" for v in failed)
            error = IntegrityError if all(v.verifier == ChecksumVerifier.name for v in failed) else VerificationError
            refused = error(f"{file.path}: verification failed ({reasons}); the file was not archived", path=file.path)
            refused.verdicts = tuple(results)
            raise refused
