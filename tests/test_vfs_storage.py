from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from artifact_import import (
    ReadOnlyStorageError,
    StorageFileNotFoundError,
    StorageNotFoundError,
    StoragePool,
    StorageTarget,
    UnsafePathError,
    VFSStorage,
)

from .conftest import files_under


async def _chunks(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, part in enumerate(parts):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("source went away")
        yield part


async def test_pending_write_is_invisible_until_commit(tmp_path: Path) -> None:
    storage = VFSStorage("s", tmp_path)
    pending = await storage.open_write("deep/folder/model.bin")
    await pending.write(b"half")
    assert not (tmp_path / "deep/folder/model.bin").exists()
    await pending.write(b" and the rest")
    await pending.commit()
    assert (tmp_path / "deep/folder/model.bin").read_bytes() == b"half and the rest"
    assert files_under(tmp_path) == {"deep/folder/model.bin": b"half and the rest"}


async def test_abort_removes_the_temp_file_and_the_folders_it_created(tmp_path: Path) -> None:
    storage = VFSStorage("s", tmp_path)
    (tmp_path / "existing").mkdir()
    pending = await storage.open_write("existing/new/deeper/x.bin")
    await pending.write(b"partial")
    await pending.abort()
    await pending.abort()  # idempotent: cleanup paths may call it again
    assert list(tmp_path.rglob("*")) == [tmp_path / "existing"]


async def test_stream_upload_aborts_when_the_stream_fails(tmp_path: Path) -> None:
    storage = VFSStorage("s", tmp_path)
    (tmp_path / "model.bin").write_bytes(b"previous version")
    with pytest.raises(ConnectionResetError):
        await storage.stream_upload("model.bin", _chunks(b"new ", b"bytes", fail_after=1))
    # The previous complete file is untouched, and no temp file is left.
    assert files_under(tmp_path) == {"model.bin": b"previous version"}


async def test_round_trip_and_file_info(tmp_path: Path) -> None:
    storage = VFSStorage("s", tmp_path, chunk_size=4)
    info = await storage.stream_upload("a/b.txt", _chunks(b"0123456789"))
    assert info.size == 10
    assert (await storage.get_file_info("a/b.txt")).size == 10
    chunks = [c async for c in storage.stream_download("a/b.txt")]
    assert chunks == [b"0123", b"4567", b"89"]
    await storage.delete_file("a/b.txt")
    await storage.delete_file("a/b.txt")  # missing is not an error
    with pytest.raises(StorageFileNotFoundError, match=r"a/b\.txt"):
        await storage.get_file_info("a/b.txt")
    with pytest.raises(StorageFileNotFoundError):
        [c async for c in storage.stream_download("nope.bin")]


@pytest.mark.parametrize("bad", ["../escape", "/etc/passwd", "a/../../b", "nul\x00byte", "back\\slash"])
async def test_unsafe_paths_are_refused_before_touching_the_disk(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    storage = VFSStorage("s", root)
    with pytest.raises(UnsafePathError):
        await storage.open_write(bad)
    assert list(tmp_path.rglob("*")) == [root]


async def test_a_symlink_out_of_the_root_is_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    os.symlink(outside, root / "link")
    storage = VFSStorage("s", root)
    with pytest.raises(UnsafePathError, match="outside the storage root"):
        await storage.stream_upload("link/planted.bin", _chunks(b"x"))
    assert list(outside.iterdir()) == []


async def test_read_only_storage_refuses_writes(tmp_path: Path) -> None:
    storage = VFSStorage("archive", tmp_path, read_only=True)
    with pytest.raises(ReadOnlyStorageError, match="read-only"):
        await storage.open_write("x.bin")
    assert list(tmp_path.iterdir()) == []


def test_storage_target_resolves_names_through_the_pool_and_instances_directly(tmp_path: Path) -> None:
    named = VFSStorage("models", tmp_path / "a")
    direct = VFSStorage("vfolder_storage_req1", tmp_path / "b")
    pool = StoragePool({"models": named})
    assert StorageTarget("models").resolve(pool) is named
    assert StorageTarget(direct).resolve(pool) is direct
    with pytest.raises(StorageNotFoundError, match=r"'missing'.*models"):
        StorageTarget("missing").resolve(pool)


async def test_delete_prunes_only_the_folders_the_storage_created(tmp_path: Path) -> None:
    storage = VFSStorage("s", tmp_path)
    (tmp_path / "mine").mkdir()
    await storage.stream_upload("mine/a.bin", _chunks(b"a"))
    await storage.stream_upload("made/by/us/b.bin", _chunks(b"b"))
    await storage.delete_file("mine/a.bin")
    await storage.delete_file("made/by/us/b.bin")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["mine"], "a folder the user made stays"
