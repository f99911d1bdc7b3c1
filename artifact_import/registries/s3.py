"""A bucket or prefix on an S3-protocol server as a source (``s3://BUCKET/PREFIX``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from collections.abc import AsyncIterator

from ..errors import AccessDeniedError, DownloadError, IntegrityError, SourceError
from ..model import ArtifactFile, ModelTarget, ResolvedArtifact
from ..paths import RESERVED_DIR, check_listing
from ..s3 import S3Bridge, S3Endpoint
from ..storages.object import ObjectStorage
from ..streams import DEFAULT_CHUNK_SIZE, closing
from .base import AbstractRegistry
from .http import RetryPolicy
from .ranges import ConnectionBudget, ParallelPolicy, fetch

log = logging.getLogger(__name__)

#: A single-part upload's ETag is the MD5 of the content; a multipart one is "<md5 of md5s>-<parts>".
_PLAIN_MD5 = re.compile(r"^[0-9a-f]{32}$")


class S3Registry(AbstractRegistry):
    """Imports every object under a prefix, pinned to the ETags listed at the start.

    The "commit" of such a source is a digest of its listing (keys, sizes,
    ETags): two imports with the same commit read the same bytes. Each GET
    carries ``If-Match`` with the listed ETag, so an object replaced
    mid-import fails the import instead of mixing versions. A single-part
    object's ETag is its MD5, which is then verified; for multipart objects
    the size is checked.
    """

    scheme = "s3"

    def __init__(
        self,
        name: str = "s3",
        *,
        endpoint: S3Endpoint | None = None,
        retry: RetryPolicy | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        threads: int = 8,
        parallel: ParallelPolicy | None = None,
    ) -> None:
        self.name = name
        self.endpoint = endpoint or S3Endpoint.from_env()
        self.retry = retry or RetryPolicy()
        self.chunk_size = chunk_size
        self.parallel = parallel or ParallelPolicy()
        #: The connections this registry's downloads share; made anew by aclose (its semaphores belong to a loop).
        self.budget = ConnectionBudget(self.parallel)
        self._bridge = S3Bridge(
            self.endpoint,
            threads=max(threads, self.parallel.connections),
            denied=AccessDeniedError,
            failed=SourceError,
            missing=SourceError,
        )

    def _bucket(self, model: ModelTarget) -> ObjectStorage:
        bucket, _, prefix = model.repo_id.partition("/")
        return ObjectStorage(
            self.name, self.endpoint, bucket, prefix, read_only=True, chunk_size=self.chunk_size, bridge=self._bridge
        )

    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        storage = self._bucket(model)
        listing = await storage.list_objects()
        # Our own manifest and staging are not part of the artifact.
        listing = [o for o in listing if not o[0].startswith(f"{RESERVED_DIR}/") and model.selects(o[0])]
        files = tuple(
            ArtifactFile(path, size, md5=etag if _PLAIN_MD5.match(etag) else None, etag=etag)
            for path, size, etag in sorted(listing)
        )
        check_listing(f.path for f in files)
        digest = hashlib.sha1()
        for f in files:
            digest.update(f"{f.path}\0{f.size}\0{f.etag}\n".encode())
        return ResolvedArtifact(
            source=f"s3://{model.repo_id}",
            repo_id=model.repo_id,
            revision=model.revision,
            commit=digest.hexdigest(),
            files=files,
        )

    def open(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        storage = self._bucket(ModelTarget(artifact.repo_id, scheme="s3"))

        budget = self.budget

        def open_range(start: int, end: int | None) -> AsyncIterator[bytes]:
            return self._range(storage, file, start, end, budget)

        if file.size is None:
            return self._range(storage, file, offset, None, budget)
        return fetch(open_range, file.size, offset, budget, name=file.path)

    async def _range(
        self, storage: ObjectStorage, file: ArtifactFile, start: int, end: int | None, budget: ConnectionBudget
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of the object (to its end if ``end`` is None), retried and resumed; every
        GET carries the listed ETag (``If-Match``), so all ranges come from one version."""
        key = storage.key(file.path)
        received = start
        stop = end if end is not None else file.size
        failures = 0
        while True:
            try:
                length = stop - received if end is not None and stop is not None else None
                chunks = storage.read_object(key, what=file.path, etag=file.etag, offset=received, length=length)
                async with closing(chunks):
                    async for chunk in chunks:
                        received += len(chunk)
                        failures = 0
                        yield chunk
                if stop is None or received >= stop:
                    return
                reason = f"stream ended after {received} of {stop} bytes"
            except SourceError as exc:
                if "PreconditionFailed" in exc.message:
                    raise IntegrityError(
                        f"{file.path}: the object changed at the source while it was being imported", path=file.path
                    ) from None
                if isinstance(exc, AccessDeniedError) or "cannot reach" not in exc.message:
                    raise
                reason = exc.message
            failures += 1
            budget.connections.trouble()
            if failures >= self.retry.max_attempts:
                raise DownloadError(
                    f"{file.path}: download failed after {failures} attempts ({reason})", path=file.path
                )
            await asyncio.sleep(self.retry.delay(failures, None))

    async def aclose(self) -> None:
        self.budget = ConnectionBudget(self.parallel)
        self._bridge.close()
