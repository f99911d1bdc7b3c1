"""A bucket (or a prefix in it) on an S3-protocol server as a storage."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any

from .._aio import run_to_completion
from ..errors import StorageError, StorageFileNotFoundError, UnsafePathError
from ..paths import PARTIAL_DIR, RESERVED_DIR, is_reserved, path_problem
from ..s3 import S3Bridge, S3Endpoint
from ..streams import DEFAULT_CHUNK_SIZE, one_chunk
from .base import AbstractStorage, FileInfo, PendingWrite
from .lease import DEFAULT_LEASE, LOCK_PATH, ObjectLock

log = logging.getLogger(__name__)

MiB = 1 << 20
#: S3 limits: parts of 5 MiB to 5 GiB (the last may be smaller), at most 10,000 of them.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 << 30
MAX_PARTS = 10_000
#: Below this a file is buffered and PUT whole at commit; above it, multipart.
DEFAULT_MULTIPART_THRESHOLD = 8 * MiB
#: The smallest part of a multipart upload (larger when the size calls for it).
DEFAULT_PART_SIZE = 8 * MiB
#: Metadata key (``x-amz-meta-sha256``) holding the verified sha256 of an object.
SHA256_METADATA = "sha256"


def upload_token_path(path: str, upload_id: str) -> str:
    """Where the id of a multipart upload of ``path`` is recorded while it is open (one name per upload)."""
    return f"{PARTIAL_DIR}/uploads/{path}.{hashlib.sha1(upload_id.encode()).hexdigest()[:16]}.json"


def staged_path(path: str) -> str:
    """Where a small verified file waits for the commit (copied to ``path`` by it)."""
    return f"{PARTIAL_DIR}/commit/{path}"


def _md5_base64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def part_size_for(part_number: int, size_hint: int | None, base: int) -> int:
    """The size of part ``part_number`` (1-based).

    With a known size, one size for every part, large enough that the file
    fits in 10,000 parts. With an unknown size, parts double every 1,000, so
    any object S3 can hold fits (S3 allows parts of different sizes).
    """
    base = max(base, MIN_PART_SIZE)
    if size_hint is not None:
        needed = math.ceil(size_hint / (MAX_PARTS - 1))
        return min(MAX_PART_SIZE, max(base, math.ceil(needed / MiB) * MiB))
    return min(MAX_PART_SIZE, base * (1 << ((part_number - 1) // 1000)))


class ObjectStorage(AbstractStorage):
    """Objects under ``prefix`` in ``bucket``; file paths are keys below the prefix.

    A write stays invisible until it commits: small files are buffered (up
    to ``multipart_threshold``) and PUT at commit; larger ones stream as a
    multipart upload, completed at commit and aborted otherwise. Memory per
    write is at most ``parts_in_flight`` + 1 parts.
    """

    def __init__(
        self,
        name: str,
        endpoint: S3Endpoint,
        bucket: str,
        prefix: str = "",
        *,
        read_only: bool = False,
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
        parts_in_flight: int = 4,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        threads: int = 8,
        bridge: S3Bridge | None = None,
        journal_uploads: bool = True,
        lock_lease: float = DEFAULT_LEASE,
    ) -> None:
        super().__init__(name, read_only=read_only)
        if len(bucket) < 3 or "/" in bucket:
            raise StorageError(f"storage {name}: invalid bucket name {bucket!r}")
        prefix = prefix.strip("/")
        if prefix and path_problem(prefix) is not None:
            raise UnsafePathError([(prefix, f"as a key prefix: {path_problem(prefix)}")])
        self.endpoint = endpoint
        self.bucket = bucket
        self.prefix = prefix
        self.multipart_threshold = max(multipart_threshold, 1)
        self.part_size = part_size
        self.parts_in_flight = max(parts_in_flight, 1)
        self.chunk_size = chunk_size
        self.bridge = bridge or S3Bridge(endpoint, threads=threads)
        #: Multipart uploads an abort could not reach; retried by preflight() and aclose().
        self.unaborted: set[tuple[str, str]] = set()
        #: Uploads asked for per ListMultipartUploads page (None: the server's default, 1,000).
        self.upload_listing_page: int | None = None
        #: Record each multipart upload's id under the partial folder as soon as it exists, so that after a
        #: kill -9 the next import (which removes that folder, aborting what it names) finds it: listing
        #: incomplete uploads cannot be relied on (MinIO's prefix semantics, minio-py's paging).
        self.journal_uploads = journal_uploads
        #: How long the lock of an import lives unrenewed (see :mod:`.lease`).
        self.lock_lease = lock_lease

    def describe(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"{self.name} ({self.endpoint.display}/{where})"

    def subpath(self, path: str) -> ObjectStorage:
        """The same bucket, one folder down; shares this storage's connections."""
        prefix = f"{self.prefix}/{path.strip('/')}" if self.prefix else path.strip("/")
        return ObjectStorage(
            self.name,
            self.endpoint,
            self.bucket,
            prefix,
            read_only=self.read_only,
            multipart_threshold=self.multipart_threshold,
            part_size=self.part_size,
            parts_in_flight=self.parts_in_flight,
            chunk_size=self.chunk_size,
            bridge=self.bridge,
            journal_uploads=self.journal_uploads,
            lock_lease=self.lock_lease,
        )

    def key(self, filepath: str) -> str:
        problem = path_problem(filepath)
        if problem is not None and not problem.startswith("inside the reserved"):
            raise UnsafePathError([(filepath, problem)])
        return f"{self.prefix}/{filepath}" if self.prefix else filepath

    def exclusive(
        self, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        """A lock object with a lease under the prefix (see :mod:`.lease`)."""
        lock = ObjectLock(self.bridge, self.bucket, self.key(LOCK_PATH), self.describe(), lease=self.lock_lease)
        return lock.held(wait, on_wait)

    async def preflight(self) -> None:
        """Fail now, before any download, if the bucket is missing or the keys are refused."""
        exists = await self.bridge.call(self.describe(), self.bridge.client.bucket_exists, self.bucket)
        if not exists:
            raise StorageError(f"bucket {self.bucket!r} does not exist on {self.endpoint.display}; create it first")
        await self.abort_unaborted()

    async def abort_upload(self, key: str, upload_id: str, *, what: str) -> bool:
        """Abort a multipart upload; False (and remembered for later) if the server cannot be reached."""
        try:
            await self.bridge.call(what, self.bridge.client._abort_multipart_upload, self.bucket, key, upload_id)
        except StorageFileNotFoundError:
            pass
        except StorageError as exc:
            if "NoSuchUpload" not in exc.message:
                self.unaborted.add((key, upload_id))
                return False
        self.unaborted.discard((key, upload_id))
        return True

    async def abort_unaborted(self) -> None:
        """Retry the aborts that failed while the server was unreachable."""
        for key, upload_id in sorted(self.unaborted):
            if await self.abort_upload(key, upload_id, what=key):
                log.info("%s: aborted the incomplete multipart upload %s left by an earlier failure", key, upload_id)

    async def open_write(
        self, filepath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        self.check_writable()
        return _ObjectPendingWrite(self, filepath, self.key(filepath), size_hint, sha256)

    async def stream_download(self, filepath: str) -> AsyncIterator[bytes]:
        async for chunk in self.read_object(self.key(filepath), what=filepath):
            yield chunk

    async def read_object(
        self, key: str, *, what: str, etag: str | None = None, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        """The object's bytes from ``offset`` (``length`` of them, or to the end); with ``etag``, only while
        the object is that version."""
        headers = {"If-Match": f'"{etag}"'} if etag else None
        resp = await self.bridge.call(
            what,
            self.bridge.client.get_object,
            self.bucket,
            key,
            offset=offset,
            length=length or 0,
            request_headers=headers,
        )
        try:
            while True:
                chunk = await self.bridge.call(what, resp.read, self.chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            resp.close()
            resp.release_conn()

    async def adopt(self, parked: str, filepath: str, *, incomplete: bool = False) -> PendingWrite | None:
        """The multipart upload a verified file was parked in (see ``_ObjectPendingWrite.park``), to complete."""
        if incomplete:
            return None  # the parts of an open upload cannot be read back for the verifiers
        try:
            token, key, upload_id, parts = await self._read_token(parked)
            size = int(token["size"])
        except (StorageError, ValueError, KeyError, TypeError):
            return None
        if key != self.key(filepath) or not parts:
            return None
        try:
            listed = await self.bridge.call(filepath, self._all_parts, key, upload_id)
        except StorageError:
            return None  # aborted meanwhile (e.g. by a lifecycle rule): fetch the file again
        if listed != {(number, etag) for number, (etag, _) in parts.items()}:
            return None
        pending = _ObjectPendingWrite(self, filepath, key, size, token.get("sha256"))
        pending.resume_upload(upload_id, parts, size)
        return pending

    async def move(self, src: str, dst: str) -> bool:
        """Finish the commit of ``dst`` from what ``src`` holds: a staged small file is copied into place on
        the server; an upload token's multipart upload is completed with the parts it lists."""
        if src.startswith(f"{PARTIAL_DIR}/uploads/"):
            try:
                _, key, upload_id, parts = await self._read_token(src)
            except StorageFileNotFoundError:
                return False
            except (ValueError, KeyError, TypeError):
                raise StorageError(f"{dst}: the record of its upload ({src}) is unreadable", path=dst) from None
            if key != self.key(dst):
                raise StorageError(f"{dst}: the record of its upload ({src}) names another key", path=dst)
            from minio.datatypes import Part

            listed = [Part(number, etag) for number, (etag, _) in sorted(parts.items())]
            try:
                await self.bridge.call(
                    dst, self.bridge.client._complete_multipart_upload, self.bucket, key, upload_id, listed
                )
            except StorageError as exc:
                if "NoSuchUpload" not in exc.message:
                    raise
                moved = False  # completed before the crash
            else:
                moved = True
        else:
            from minio.commonconfig import CopySource

            try:
                await self.bridge.call(
                    dst,
                    self.bridge.client.copy_object,
                    self.bucket,
                    self.key(dst),
                    CopySource(self.bucket, self.key(src)),
                )
            except StorageFileNotFoundError:
                return False
            moved = True
        with contextlib.suppress(StorageError):
            await self.delete_file(src)
        return moved

    async def _read_token(self, path: str) -> tuple[dict[str, Any], str, str, dict[int, tuple[str, int | None]]]:
        """A token ``_ObjectPendingWrite`` wrote: it whole, its key, upload id, and parts (number -> ETag, size).

        Raises ValueError, KeyError or TypeError when it is not one."""
        token = json.loads(b"".join([c async for c in self.stream_download(path)]))
        # [number, etag, size]; tokens parked by earlier versions have no size.
        parts = {int(p[0]): (str(p[1]), int(p[2]) if len(p) > 2 else None) for p in token["parts"]}
        return token, str(token["key"]), str(token["upload_id"]), parts

    def _all_parts(self, key: str, upload_id: str) -> set[tuple[int, str]]:
        found: set[tuple[int, str]] = set()
        marker: str | None = None
        while True:
            page = self.bridge.client._list_parts(self.bucket, key, upload_id, part_number_marker=marker)
            found.update((p.part_number, p.etag.strip('"')) for p in page.parts)
            if not page.is_truncated:
                return found
            marker = page.next_part_number_marker

    async def delete_folder(self, path: str) -> None:
        """Remove every object under ``path``, aborting the uploads that parked tokens there refer to."""
        start = self.key(path).rstrip("/") + "/"

        def listing() -> list[str]:
            return [
                str(o.object_name) for o in self.bridge.client.list_objects(self.bucket, prefix=start, recursive=True)
            ]

        for key in await self.bridge.call(path, listing):
            what = key[len(self.prefix) + 1 :] if self.prefix else key
            try:
                token = json.loads(b"".join([c async for c in self.read_object(key, what=what)]))
                if isinstance(token, dict) and "upload_id" in token and "key" in token:
                    await self.abort_upload(str(token["key"]), str(token["upload_id"]), what=what)
            except (StorageError, ValueError):
                pass
            await self.bridge.call(what, self.bridge.client.remove_object, self.bucket, key)

    async def collision(self, key: str) -> str | None:
        """Why ``key`` cannot be written on a server built on MinIO, or None.

        Such servers (MinIO, JuiceFS's gateway) keep objects as files, so a
        key cannot be both an object and a folder of other objects; AWS S3 can.
        Asked after a write failed, to say so instead of "HTTP 500".
        """

        def probe() -> str | None:
            client = self.bridge.client
            parts = key.split("/")
            for depth in range(1, len(parts)):
                ancestor = "/".join(parts[:depth])
                try:
                    client.stat_object(self.bucket, ancestor)
                except Exception:
                    continue
                return (
                    f"cannot write {key!r}: {ancestor!r} is an object in bucket {self.bucket!r}, and this server "
                    "cannot hold an object and a folder of the same name. Remove that object, or import elsewhere"
                )
            for _ in client.list_objects(self.bucket, prefix=f"{key}/"):
                return (
                    f"cannot write {key!r}: it is already a folder of objects in bucket {self.bucket!r}, and this "
                    "server cannot hold an object and a folder of the same name. Remove them, or import elsewhere"
                )
            return None

        return await self.bridge.call(key, probe)

    async def delete_file(self, filepath: str) -> None:
        self.check_writable()
        await self.bridge.call(filepath, self.bridge.client.remove_object, self.bucket, self.key(filepath))

    async def get_file_info(self, filepath: str) -> FileInfo:
        stat = await self.bridge.call(filepath, self.bridge.client.stat_object, self.bucket, self.key(filepath))
        recorded = (stat.metadata or {}).get(f"x-amz-meta-{SHA256_METADATA}")
        return FileInfo(filepath, stat.size or 0, str(recorded).lower() if recorded else None)

    async def list_objects(self) -> list[tuple[str, int, str]]:
        """(path below the prefix, size, ETag) of every object under the prefix."""

        def listing() -> list[tuple[str, int, str]]:
            start = f"{self.prefix}/" if self.prefix else ""
            found = self.bridge.client.list_objects(self.bucket, prefix=start or None, recursive=True)
            return [
                (str(o.object_name)[len(start) :], o.size or 0, (o.etag or "").strip('"'))
                for o in found
                if not o.is_dir
            ]

        return await self.bridge.call(self.describe(), listing)

    async def list_files(self) -> AsyncIterator[FileInfo]:
        for path, size, _ in await self.list_objects():
            if not (path == RESERVED_DIR or path.startswith(f"{RESERVED_DIR}/")):
                yield FileInfo(path, size)

    async def incomplete_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of multipart uploads under the prefix that were neither completed nor aborted.

        Listed for the whole bucket and filtered here: MinIO's erasure backend
        treats a ListMultipartUploads prefix as an exact object name, so a
        prefix finds nothing there. Pages are followed by the last upload of
        each page, since minio-py never sets ``next_upload_id_marker``; a page
        whose markers do not advance ends the listing rather than looping.
        """
        start = f"{self.prefix}/" if self.prefix else ""

        def listing() -> list[tuple[str, str]]:
            found: list[tuple[str, str]] = []
            markers: tuple[str | None, str | None] = (None, None)
            while True:
                page = self.bridge.client._list_multipart_uploads(
                    self.bucket,
                    key_marker=markers[0],
                    upload_id_marker=markers[1],
                    max_uploads=self.upload_listing_page,
                )
                uploads = [(str(u.object_name), str(u.upload_id)) for u in page.uploads]
                found.extend(u for u in uploads if u[0].startswith(start))
                if not page.is_truncated or not uploads or uploads[-1] == markers:
                    return found
                markers = uploads[-1]

        return await self.bridge.call(self.describe(), listing)

    async def aclose(self) -> None:
        if self.unaborted:
            with contextlib.suppress(StorageError):
                await self.abort_unaborted()
        self.bridge.close()


class _ObjectPendingWrite(PendingWrite):
    def __init__(self, storage: ObjectStorage, path: str, key: str, size_hint: int | None, sha256: str | None) -> None:
        super().__init__(path)
        self._s = storage
        self._key = key
        self._size_hint = size_hint
        self._sha256 = sha256
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._upload_id: str | None = None
        self._next_part = 1
        #: Parts the server acknowledged: number -> (ETag, bytes sent).
        self._parts: dict[int, tuple[str, int | None]] = {}
        self._in_flight: set[asyncio.Task[None]] = set()
        #: The first part upload that failed: it fails the write, whoever looks first.
        self._failure: BaseException | None = None
        self._slots = asyncio.Semaphore(storage.parts_in_flight)
        self._ended = False

    @property
    def _bridge(self) -> S3Bridge:
        return self._s.bridge

    def resume_upload(self, upload_id: str, parts: dict[int, tuple[str, int | None]], size: int) -> None:
        """Take over a parked multipart upload holding all ``size`` bytes: commit completes it."""
        self._upload_id = upload_id
        self._parts = dict(parts)
        self._next_part = max(parts) + 1
        self.bytes_written = size

    async def park(self, path: str, *, complete: bool = True) -> bool:
        """Keep a verified file's multipart upload open, with a token naming it at ``path``.

        Small files (never uploaded yet) and incomplete ones are not parked:
        the first are cheap to fetch again, the second cannot be read back.
        """
        if self._ended or not complete or self._upload_id is None:
            return False
        try:
            if self._buffered:
                await self._send_part(b"".join(self._buffer))
                self._buffer, self._buffered = [], 0
            await self._drain()
            await self._write_token(path)
        except StorageError:
            return False
        self._ended = True
        return True

    async def write(self, chunk: bytes) -> None:
        self._raise_failed_part()
        self._buffer.append(chunk)
        self._buffered += len(chunk)
        self.bytes_written += len(chunk)
        if self._upload_id is None and self._buffered <= self._s.multipart_threshold:
            return
        if self._upload_id is None:
            headers = {f"x-amz-meta-{SHA256_METADATA}": self._sha256} if self._sha256 else {}
            headers["Content-Type"] = "application/octet-stream"

            async def create() -> None:
                self._upload_id = await self._bridge.call(
                    self.path, self._bridge.client._create_multipart_upload, self._s.bucket, self._key, headers
                )

            # Shielded: a cancellation while the server creates the upload must still learn its id, or the
            # abort that follows could not remove it.
            try:
                await run_to_completion(create())
            except StorageError as exc:
                raise await self._explained(exc) from None
            if self._s.journal_uploads and not is_reserved(self.path):
                assert self._upload_id is not None
                token = {"key": self._key, "upload_id": self._upload_id}
                await self._s.stream_upload(
                    upload_token_path(self.path, self._upload_id), one_chunk(json.dumps(token).encode())
                )
        while self._buffered >= (size := part_size_for(self._next_part, self._size_hint, self._s.part_size)):
            data = b"".join(self._buffer)
            self._buffer = [data[size:]] if len(data) > size else []
            self._buffered = len(data) - size
            await self._send_part(data[:size])

    async def _send_part(self, data: bytes) -> None:
        number = self._next_part
        self._next_part += 1
        await self._slots.acquire()
        task = asyncio.ensure_future(self._upload_part(number, data))
        self._in_flight.add(task)
        task.add_done_callback(self._part_done)

    def _part_done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        # Taken here, as the task ends: a failure noticed only by scanning the tasks still in flight was lost
        # once its task left that set, and the upload was completed without the part.
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()

    async def _upload_part(self, number: int, data: bytes) -> None:
        # minio signs the payload's sha256 over http and adds Content-MD5 over https; Content-MD5 is added
        # over http too, since some servers (SeaweedFS) check only that: every server checks every part.
        upload_id = self._upload_id
        assert upload_id is not None

        def upload() -> str:
            headers: dict[str, str | list[str] | tuple[str]] | None = (
                None if self._s.endpoint.secure else {"Content-MD5": _md5_base64(data)}
            )
            return str(self._bridge.client._upload_part(self._s.bucket, self._key, data, headers, upload_id, number))

        etag = await self._bridge.call(f"{self.path} (part {number})", upload)
        self._parts[number] = (etag, len(data))

    def _raise_failed_part(self) -> None:
        if self._failure is not None:
            raise self._failure

    @property
    def _journaled(self) -> bool:
        return self._s.journal_uploads and not is_reserved(self.path)

    async def flush(self) -> None:
        """Upload what is buffered as the last part and wait for every part's acknowledgement.

        A small file is staged whole in the partial folder, where a commit cut short by a crash finds it
        (see :meth:`ObjectStorage.move`); where writes are not journaled, it is PUT whole at commit.
        """
        if self._ended:
            return
        if self._upload_id is None:
            if self._journaled and self.journal is None:
                staged = staged_path(self.path)
                await self._put_whole(self._s.key(staged))
                self.journal = staged
            return
        if self._buffered or self._next_part == 1:
            await self._send_part(b"".join(self._buffer))
            self._buffer, self._buffered = [], 0
        await self._drain()
        self._check_parts()

    async def prepare_commit(self) -> str | None:
        """The staged copy of a small file; for a multipart upload, its token rewritten with every part."""
        if not self._journaled or self._ended:
            return None
        await self.flush()
        if self._upload_id is not None:
            path = upload_token_path(self.path, self._upload_id)
            await self._write_token(path)
            self.journal = path
        return self.journal

    async def _write_token(self, path: str) -> None:
        """Record at ``path`` the open upload and every part sent (read by ``adopt`` and ``move``)."""
        token = {
            "key": self._key,
            "upload_id": self._upload_id,
            "parts": [[number, etag, size] for number, (etag, size) in sorted(self._parts.items())],
            "size": self.bytes_written,
            "sha256": self._sha256,
        }
        await self._s.stream_upload(path, one_chunk(json.dumps(token).encode()))

    async def commit(self) -> None:
        if self._ended:
            raise StorageError(f"{self.path}: pending write already ended")
        try:
            if self._upload_id is None and self.journal is not None:
                if not await self._s.move(self.journal, self.path):
                    raise StorageError(f"{self.path}: its staged copy ({self.journal}) is gone", path=self.path)
            elif self._upload_id is None:
                await self._put_whole(self._key)
            else:
                await self.flush()
                from minio.datatypes import Part

                parts = [Part(number, etag) for number, (etag, _) in sorted(self._parts.items())]
                await self._bridge.call(
                    self.path,
                    self._bridge.client._complete_multipart_upload,
                    self._s.bucket,
                    self._key,
                    self._upload_id,
                    parts,
                )
        except StorageError as exc:
            await run_to_completion(self.abort())
            raise await self._explained(exc) from None
        except BaseException:
            await run_to_completion(self.abort())
            raise
        self._ended = True
        if self._upload_id is not None:
            await self._check_stored_size()
            await self._forget_upload()

    async def _explained(self, exc: StorageError) -> StorageError:
        """``exc``, or a clearer error when the key collides with an object or a folder of the same name."""
        try:
            collision = await self._s.collision(self._key)
        except StorageError:
            return exc
        return StorageError(f"{self.path}: {collision}", path=self.path) if collision else exc

    def _check_parts(self) -> None:
        """Complete only an upload whose parts are exactly 1..N, each acknowledged, adding up to what was sent."""
        expected = list(range(1, self._next_part))
        if sorted(self._parts) != expected:
            missing = sorted(set(expected) - set(self._parts))
            raise StorageError(
                f"{self.path}: part(s) {', '.join(map(str, missing[:10]))} of the multipart upload were not "
                "acknowledged by the server; the upload was not completed",
                path=self.path,
            )
        sizes = [size for _, size in self._parts.values()]
        if None not in sizes and sum(s for s in sizes if s is not None) != self.bytes_written:
            raise StorageError(
                f"{self.path}: the parts hold {sum(s for s in sizes if s is not None)} bytes, "
                f"{self.bytes_written} were written; the upload was not completed",
                path=self.path,
            )

    async def _check_stored_size(self) -> None:
        """After completion, the object must hold every byte written; if not, it is removed, never left."""
        info = await self._s.bridge.call(self.path, self._bridge.client.stat_object, self._s.bucket, self._key)
        if info.size != self.bytes_written:
            await self._bridge.call(self.path, self._bridge.client.remove_object, self._s.bucket, self._key)
            raise StorageError(
                f"{self.path}: {self._s.endpoint.display} stored {info.size} bytes of the {self.bytes_written} "
                "sent; the object was removed",
                path=self.path,
            )

    async def _put_whole(self, key: str) -> None:
        data = b"".join(self._buffer)
        self._buffer, self._buffered = [], 0
        sha256 = self._sha256 or hashlib.sha256(data).hexdigest()
        await self._bridge.call(
            self.path,
            self._bridge.client.put_object,
            self._s.bucket,
            key,
            io.BytesIO(data),
            len(data),
            metadata={SHA256_METADATA: sha256},
        )

    async def _drain(self) -> None:
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))
            self._raise_failed_part()

    async def _forget_upload(self) -> None:
        """The upload is completed or aborted: its recorded id is no longer needed (best effort: a token
        left behind only names an upload the next import's abort finds gone)."""
        if self._s.journal_uploads and self._upload_id is not None and not is_reserved(self.path):
            with contextlib.suppress(StorageError):
                await self._s.delete_file(upload_token_path(self.path, self._upload_id))

    async def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        self._buffer, self._buffered = [], 0
        # Parts already running in threads cannot be stopped; wait, so that
        # none lands after the abort.
        if self._in_flight:
            await asyncio.wait(set(self._in_flight))
        if self._upload_id is None:
            if self.journal is not None:
                with contextlib.suppress(StorageError):
                    await self._s.delete_file(self.journal)
            return
        for attempt in range(3):
            if await self._s.abort_upload(self._key, self._upload_id, what=self.path):
                await self._forget_upload()
                return
            await asyncio.sleep(0.5 * (attempt + 1))
        log.error(
            "%s: could not abort the incomplete multipart upload %s of %s/%s on %s: the server cannot be "
            "reached. It holds the parts sent so far; this storage aborts it on its next use, or remove it "
            "with `mc rm --incomplete` or a lifecycle rule AbortIncompleteMultipartUpload",
            self.path,
            self._upload_id,
            self._s.bucket,
            self._key,
            self._s.endpoint.display,
        )
