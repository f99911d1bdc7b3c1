"""ObjectStorage against a real S3-protocol server (moto by default, MinIO if configured)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator

import pytest

from artifact_import import (
    ObjectStorage,
    ReadOnlyStorageError,
    S3Credentials,
    S3Endpoint,
    StorageError,
    StorageFileNotFoundError,
    UnsafePathError,
)
from artifact_import.paths import is_reserved
from artifact_import.storages.object import MAX_PARTS, MiB, part_size_for

from .s3server import S3Server


async def _chunks(data: bytes, size: int = MiB, fail_at: int | None = None) -> AsyncIterator[bytes]:
    for off in range(0, len(data), size):
        if fail_at is not None and off >= fail_at:
            raise ConnectionResetError("source went away")
        yield data[off : off + size]


def _storage(s3: S3Server, bucket: str, prefix: str = "", **kw: object) -> ObjectStorage:
    return ObjectStorage("objects", s3.endpoint, bucket, prefix, **kw)  # type: ignore[arg-type]


async def _keys(storage: ObjectStorage) -> dict[str, int]:
    """What a user of the bucket sees: the objects outside the library's reserved folder."""
    return {path: size for path, size, _ in await storage.list_objects() if not is_reserved(path)}


def test_part_size_keeps_every_file_under_10000_parts() -> None:
    for size in (0, 1, 100 * MiB, 48 << 30, 200 << 30, 5 << 40):
        part = part_size_for(1, size, 8 * MiB)
        assert part >= 5 * MiB and (size + part - 1) // part <= MAX_PARTS, size
    # Unknown size: parts grow, so 10,000 of them hold any object S3 allows (5 TiB).
    capacity = sum(part_size_for(n, None, 8 * MiB) for n in range(1, MAX_PARTS + 1))
    assert capacity >= 5 << 40


async def test_small_file_is_invisible_until_commit_and_carries_its_sha256(s3: S3Server) -> None:
    storage = _storage(s3, s3.make_bucket(), "hub/models")
    data = os.urandom(300_000)
    pending = await storage.open_write("cfg/config.json")
    async for chunk in _chunks(data, 64 * 1024):
        await pending.write(chunk)
    assert await _keys(storage) == {}
    await pending.commit()
    assert await _keys(storage) == {"cfg/config.json": len(data)}
    stat = storage.bridge.client.stat_object(storage.bucket, "hub/models/cfg/config.json")
    assert stat.metadata["x-amz-meta-sha256"] == hashlib.sha256(data).hexdigest()
    assert b"".join([c async for c in storage.stream_download("cfg/config.json")]) == data
    assert (await storage.get_file_info("cfg/config.json")).size == len(data)
    await storage.aclose()


async def test_large_file_of_unknown_length_goes_multipart_and_appears_only_on_commit(s3: S3Server) -> None:
    storage = _storage(s3, s3.make_bucket(), multipart_threshold=5 * MiB, part_size=5 * MiB)
    data = os.urandom(17 * MiB + 123)
    pending = await storage.open_write("weights/model.bin")  # no size hint: a stream of unknown length
    async for chunk in _chunks(data):
        await pending.write(chunk)
    assert len(await storage.incomplete_uploads()) == 1, "a multipart upload is in progress"
    assert await _keys(storage) == {}
    await pending.commit()
    assert await _keys(storage) == {"weights/model.bin": len(data)}
    assert await storage.incomplete_uploads() == []
    etag = next(e for _, _, e in await storage.list_objects())
    assert etag.endswith("-4"), f"4 parts of 5 MiB expected, got ETag {etag}"
    assert b"".join([c async for c in storage.stream_download("weights/model.bin")]) == data
    await storage.aclose()


async def test_abort_leaves_no_object_and_no_incomplete_upload(s3: S3Server) -> None:
    storage = _storage(s3, s3.make_bucket(), multipart_threshold=5 * MiB, part_size=5 * MiB)
    with pytest.raises(ConnectionResetError):
        await storage.stream_upload("big.bin", _chunks(os.urandom(16 * MiB), fail_at=12 * MiB))
    with pytest.raises(ConnectionResetError):
        await storage.stream_upload("small.bin", _chunks(os.urandom(2 * MiB), fail_at=1 * MiB))
    assert await _keys(storage) == {}
    assert await storage.incomplete_uploads() == []
    await storage.aclose()


async def test_cancelled_upload_is_aborted(s3: S3Server) -> None:
    storage = _storage(s3, s3.make_bucket(), multipart_threshold=5 * MiB, part_size=5 * MiB)
    started = asyncio.Event()

    async def endless() -> AsyncIterator[bytes]:
        block = os.urandom(MiB)
        for i in range(1000):
            if i == 12:
                started.set()
            yield block
            await asyncio.sleep(0)

    task = asyncio.create_task(storage.stream_upload("endless.bin", endless()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await storage.incomplete_uploads() == []
    assert await _keys(storage) == {}
    await storage.aclose()


async def test_read_only_and_unsafe_paths_are_refused(s3: S3Server) -> None:
    bucket = s3.make_bucket()
    with pytest.raises(ReadOnlyStorageError):
        await _storage(s3, bucket, read_only=True).open_write("x.bin")
    storage = _storage(s3, bucket)
    for bad in ("../x", "/abs", "a/../../b"):
        with pytest.raises(UnsafePathError):
            await storage.open_write(bad)
    with pytest.raises(StorageFileNotFoundError, match=r"nope\.bin"):
        await storage.get_file_info("nope.bin")
    await storage.aclose()


async def test_subpath_is_a_prefix_below(s3: S3Server) -> None:
    bucket = s3.make_bucket()
    root = _storage(s3, bucket, "vol")
    sub = root.subpath("folder-1/models")
    await sub.stream_upload("a.txt", _chunks(b"hello"))
    assert await _keys(root) == {"folder-1/models/a.txt": 5}
    await root.aclose()


async def test_missing_bucket_and_bad_credentials_fail_before_any_write(
    s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    if s3.external:
        secret = "definitely-wrong-secret-value"
        bad = S3Endpoint(s3.endpoint.url, S3Credentials("wrong-access-key", secret))
        with pytest.raises(StorageError) as info:
            await ObjectStorage("objects", bad, s3.make_bucket()).preflight()
        assert "refused" in str(info.value) and secret not in str(info.value)
    with pytest.raises(StorageError, match="does not exist"):
        await _storage(s3, "no-such-bucket-here").preflight()


async def test_errors_never_carry_the_secret(s3: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    creds = s3.endpoint.credentials
    assert creds is not None
    storage = _storage(s3, "no-such-bucket-here")
    with pytest.raises(StorageError) as info:
        await storage.stream_upload("f.bin", _chunks(b"x"))
    assert creds.secret_key not in str(info.value)
    assert creds.secret_key not in repr(storage.endpoint) and creds.secret_key not in caplog.text
    await storage.aclose()
