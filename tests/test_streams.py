from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import pytest

from artifact_import.streams import Hasher, git_blob_prefix, read_ahead, rechunk


async def _gen(chunks: list[bytes], log: list[str] | None = None) -> AsyncIterator[bytes]:
    try:
        for c in chunks:
            if log is not None:
                log.append(f"produce {len(c)}")
            yield c
    finally:
        if log is not None:
            log.append("closed")


async def test_rechunk_coalesces_to_at_least_the_target_size_and_keeps_every_byte() -> None:
    parts = [b"a" * 3, b"b" * 5, b"c" * 1, b"d" * 20, b"e" * 2]
    out = [c async for c in rechunk(_gen(parts), 8)]
    assert b"".join(out) == b"".join(parts)
    assert [len(c) for c in out] == [8, 21, 2]


async def test_read_ahead_is_bounded_by_its_depth() -> None:
    log: list[str] = []
    stream = read_ahead(_gen([b"x"] * 50, log), depth=3)
    first = await anext(stream)
    await asyncio.sleep(0.05)  # give the producer every chance to run ahead
    assert first == b"x"
    # One taken, three queued, one blocked in put(): never the whole stream.
    assert log.count("produce 1") <= 5
    await stream.aclose()
    await asyncio.sleep(0)
    assert "closed" in log, "closing the consumer must close the source"


async def test_read_ahead_raises_the_producer_error_in_order() -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"1"
        yield b"2"
        raise OSError("disk on fire")

    got: list[bytes] = []
    with pytest.raises(OSError, match="disk on fire"):
        async for chunk in read_ahead(failing(), depth=4):
            got.append(chunk)
    assert got == [b"1", b"2"]


@pytest.mark.parametrize("size", [0, 10, 300 * 1024, 3 * 1024 * 1024 + 7])
async def test_hasher_matches_hashlib_on_small_and_threaded_chunks(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    h = Hasher("sha256")
    for off in range(0, len(data), 1 << 20):
        await h.update(data[off : off + (1 << 20)])
    assert h.hexdigest() == hashlib.sha256(data).hexdigest()


async def test_git_blob_sha1_matches_git() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    h = Hasher("sha1", git_blob_prefix(6))
    await h.update(b"hello\n")
    assert h.hexdigest() == "ce013625030ba8dba906f756967f9e9ca394464a"


async def test_rechunk_hands_over_buffered_bytes_before_an_error() -> None:
    async def dropping() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"de"
        raise ConnectionResetError("dropped")

    got: list[bytes] = []
    with pytest.raises(ConnectionResetError):
        async for chunk in rechunk(dropping(), 1024):
            got.append(chunk)
    assert got == [b"abcde"]


async def test_cleanup_survives_a_cancel_and_the_cancel_is_kept() -> None:
    from artifact_import._aio import run_to_completion

    finished = asyncio.Event()

    async def cleanup() -> None:
        await asyncio.sleep(0.05)
        finished.set()

    async def worker() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            await run_to_completion(cleanup())

    task = asyncio.create_task(worker())
    await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.sleep(0.01)
    task.cancel()  # a second cancel while cleaning up must not cut the cleanup short
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()


@pytest.mark.parametrize("sizes", [[10, 300_000, 7, 1 << 20, 5], [1 << 20] * 9 + [3], [100] * 50])
async def test_digest_worker_hashes_every_chunk_in_order_whatever_their_sizes(sizes: list[int]) -> None:
    import random
    import threading

    from artifact_import.streams import DigestWorker

    rng = random.Random(len(sizes))
    chunks = [rng.randbytes(n) for n in sizes]
    sha256, md5 = hashlib.sha256(), hashlib.md5()
    before = threading.active_count()
    worker = DigestWorker([sha256, md5])
    for chunk in chunks:
        await worker.update(chunk)
    await worker.finish()
    data = b"".join(chunks)
    assert sha256.hexdigest() == hashlib.sha256(data).hexdigest()
    assert md5.hexdigest() == hashlib.md5(data).hexdigest()
    await asyncio.sleep(0.05)
    assert threading.active_count() == before, "its thread ends with the file"


async def test_a_digest_worker_abandoned_mid_file_lets_its_thread_go() -> None:
    import threading

    from artifact_import.streams import DigestWorker

    before = threading.active_count()
    worker = DigestWorker([hashlib.sha256()])
    for _ in range(3):
        await worker.update(bytes(1 << 20))
    worker.close()
    for _ in range(100):
        if threading.active_count() == before:
            break
        await asyncio.sleep(0.01)
    assert threading.active_count() == before
