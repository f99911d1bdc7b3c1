"""Appending a file's bytes: through O_DIRECT staging blocks or the page cache, the file is what was written."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

import pytest

from artifact_import.storages.sink import ALIGN, BLOCK, FileSink


def _pieces(data: bytes, seed: int) -> list[bytes]:
    """``data`` cut at random places, as a network hands it over."""
    rng = random.Random(seed)
    pieces, at = [], 0
    while at < len(data):
        step = rng.choice([1, 7, ALIGN - 1, ALIGN, 65536, 1 << 20, BLOCK + 3])
        pieces.append(data[at : at + step])
        at += step
    return pieces


@pytest.mark.parametrize("size", [0, 1, ALIGN - 1, BLOCK, BLOCK + 1, 3 * BLOCK + 12345])
@pytest.mark.parametrize("direct", [True, False])
async def test_the_file_holds_exactly_the_bytes_written(tmp_path: Path, size: int, direct: bool) -> None:
    data = random.Random(size).randbytes(size)
    path = tmp_path / "f"
    sink = FileSink(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), direct=direct)
    if direct and not sink.staged:
        pytest.skip("this filesystem refuses O_DIRECT")
    for piece in _pieces(data, size):
        await sink.write(piece)
    await sink.flush()
    os.fsync(sink.fd)
    await sink.close()
    assert path.read_bytes() == data


async def test_a_resumed_file_at_an_unaligned_length_is_appended_through_the_cache(tmp_path: Path) -> None:
    path = tmp_path / "f"
    start = b"s" * 1000  # what an interrupted import kept
    path.write_bytes(start)
    rest = random.Random(1).randbytes(BLOCK + 5000)
    sink = FileSink(os.open(path, os.O_WRONLY | os.O_APPEND), len(start))
    assert not sink.staged, "O_DIRECT needs aligned offsets: not for this file"
    for piece in _pieces(rest, 2):
        await sink.write(piece)
    await sink.flush()
    await sink.close()
    assert path.read_bytes() == start + rest


async def test_a_resumed_file_at_an_aligned_length_goes_on_directly(tmp_path: Path) -> None:
    path = tmp_path / "f"
    start = b"s" * (2 * ALIGN)
    path.write_bytes(start)
    rest = random.Random(3).randbytes(2 * BLOCK + 77)
    sink = FileSink(os.open(path, os.O_WRONLY | os.O_APPEND), len(start))
    for piece in _pieces(rest, 4):
        await sink.write(piece)
    await sink.flush()
    await sink.close()
    assert path.read_bytes() == start + rest


async def test_a_cancelled_write_leaves_a_prefix_and_close_waits_for_the_thread(tmp_path: Path) -> None:
    """Cancelled while a block is being written in its thread: close() waits for that write before closing
    the descriptor (a descriptor closed under a running write could be reused by the next open file)."""
    path = tmp_path / "f"
    data = random.Random(5).randbytes(16 * BLOCK)
    sink = FileSink(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))

    async def write_all() -> None:
        for piece in _pieces(data, 6):
            await sink.write(piece)

    task = asyncio.create_task(write_all())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.close()
    on_disk = path.read_bytes()
    assert data.startswith(on_disk)
    assert sink.fd == -1
