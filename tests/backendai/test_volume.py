"""Our volumes and theirs: one layout on disk, and the bridge over their volumes keeping our guarantees."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path, PurePosixPath

import pytest
from ai.backend.common.types import QuotaScopeID
from ai.backend.common.types import VFolderID as TheirVFolderID
from ai.backend.storage.types import QuotaUsage
from ai.backend.storage.volumes.abc import AbstractQuotaModel
from ai.backend.storage.volumes.vfs import BaseQuotaModel, BaseVolume

from artifact_import import (
    QuotaExceededError,
    UnsafePathError,
    VFolderID,
    VFolderNotFoundError,
    VFSVolume,
)
from artifact_import.backendai import BackendAIVolume, BridgedVFolderStorage
from artifact_import.backendai.ids import our_vfid
from artifact_import.storages.vfs import PART_SUFFIX

from .theirs import base_volume, files_of, folders_of, new_vfolder

MiB = 1 << 20


async def chunks(
    total: int, size: int = MiB, *, fail_at: int | None = None, pause: float = 0.0
) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        if fail_at is not None and sent >= fail_at:
            raise RuntimeError("the source broke")
        piece = min(size, total - sent)
        yield bytes([sent // size % 251]) * piece
        sent += piece
        await asyncio.sleep(pause)


@pytest.fixture
async def bridge(volume: BaseVolume) -> BackendAIVolume:
    return BackendAIVolume("local", volume, fsync=False)


async def test_a_vfolder_their_volume_made_is_the_one_ours_opens(volume: BaseVolume) -> None:
    theirs = await new_vfolder(volume)
    await volume.add_file(theirs, PurePosixPath("a.txt"), _one(b"written by their volume"))
    ours = VFSVolume("local", volume.mount_path, fsync=False)
    vfid = our_vfid(theirs)
    assert ours.vfolder_path(vfid) == volume.mangle_vfpath(theirs)
    assert await ours.vfolder_exists(vfid)
    assert b"".join([c async for c in ours.read_file(vfid, "a.txt")]) == b"written by their volume"


async def test_a_vfolder_our_volume_made_is_the_one_theirs_opens(volume: BaseVolume) -> None:
    ours = VFSVolume("local", volume.mount_path, fsync=False)
    vfid = VFolderID(f"project:{uuid.uuid4()}", uuid.uuid4())
    await ours.create_vfolder(vfid)
    await ours.add_file(vfid, "w/b.bin", _one(b"written by ours"))
    theirs = TheirVFolderID(QuotaScopeID.parse(vfid.quota_scope_id), vfid.folder_id)
    found = [c async for c in volume.read_file(theirs, PurePosixPath("w/b.bin"))]
    assert b"".join(found) == b"written by ours"
    assert (await volume.quota_model.describe_quota_scope(theirs.quota_scope_id)) is not None


async def test_nothing_is_visible_under_its_name_until_commit(volume: BaseVolume, bridge: BackendAIVolume) -> None:
    vfid = our_vfid(await new_vfolder(volume))
    root = bridge.backend.mangle_vfpath(bridge_vfid := _theirs(vfid))
    pending = await bridge.open_pending(vfid, "weights/model.bin")
    async for chunk in chunks(3 * MiB + 5):
        await pending.write(chunk)
    await pending.flush()
    assert not (root / "weights/model.bin").exists()
    assert [p.name.endswith(PART_SUFFIX) for p in (root / "weights").iterdir()] == [True]
    await pending.commit()
    assert files_of(root) == {"weights/model.bin": b"".join([c async for c in chunks(3 * MiB + 5)])}
    assert bridge_vfid == _theirs(vfid)


@pytest.mark.parametrize("how", ["source-error", "cancel"])
async def test_a_failed_or_cancelled_write_ends_promptly_and_leaves_nothing(
    how: str, volume: BaseVolume, bridge: BackendAIVolume
) -> None:
    """Their add_file never returns when its payload raises or its task is cancelled; through the bridge, a
    write that fails or is cancelled ends at once, their add_file returns, and no trace is left."""
    vfid = our_vfid(await new_vfolder(volume))
    storage = BridgedVFolderStorage("vf", bridge, vfid, "org/model/main")
    started = time.monotonic()
    if how == "cancel":
        upload = asyncio.create_task(storage.stream_upload("deep/w.bin", chunks(64 * MiB, pause=0.01)))
        await asyncio.sleep(0.1)
        upload.cancel()
    else:
        upload = asyncio.create_task(storage.stream_upload("deep/w.bin", chunks(64 * MiB, fail_at=8 * MiB)))
    with pytest.raises(RuntimeError if how == "source-error" else asyncio.CancelledError):
        await asyncio.wait_for(upload, 10)
    assert time.monotonic() - started < 10
    root = volume.mangle_vfpath(_theirs(vfid))
    assert files_of(root) == {} and folders_of(root) == []
    assert not [t for t in asyncio.all_tasks() if "add_file" in repr(t.get_coro())], "their add_file returned"


async def test_paths_that_leave_the_vfolder_are_refused_by_their_rules(
    volume: BaseVolume, bridge: BackendAIVolume, tmp_path: Path
) -> None:
    vfid = our_vfid(await new_vfolder(volume))
    root = volume.mangle_vfpath(_theirs(vfid))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "link")
    for path in ("../../../escape.bin", "link/x.bin"):
        with pytest.raises(UnsafePathError):
            await BridgedVFolderStorage("vf", bridge, vfid).check_paths([path])
    assert list(outside.iterdir()) == []
    missing = VFolderID(f"user:{uuid.uuid4()}", uuid.uuid4())
    with pytest.raises(VFolderNotFoundError):
        await bridge.sanitize_vfpath(missing, "a.bin")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB filesystem (tmpfs): a real "disk full" in the middle of a write."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_a_full_disk_in_the_middle_of_a_write_is_a_quota_error_naming_the_vfolder(small_disk: Path) -> None:
    volume = await base_volume(small_disk / "vfroot")
    bridge = BackendAIVolume("small", volume, fsync=False)
    vfid = our_vfid(await new_vfolder(volume))
    storage = BridgedVFolderStorage("vf", bridge, vfid)
    started = time.monotonic()
    with pytest.raises(QuotaExceededError) as refused:
        await asyncio.wait_for(storage.stream_upload("big.bin", chunks(64 * MiB)), 30)
    assert time.monotonic() - started < 30
    assert str(vfid) in str(refused.value) and "full" in str(refused.value)
    root = volume.mangle_vfpath(_theirs(vfid))
    assert files_of(root) == {}, "nothing under any name: the temp file is gone too"


class LimitedQuotaModel(BaseQuotaModel):
    """Their VFS quota model, reporting a limit as XFS/CephFS/NetApp quota models do (the kernel here has no
    filesystem quotas to report one from)."""

    limit = 3 * MiB

    async def describe_quota_scope(self, quota_scope_id: QuotaScopeID) -> QuotaUsage | None:
        if await super().describe_quota_scope(quota_scope_id) is None:
            return None
        return QuotaUsage(used_bytes=0, limit_bytes=self.limit)


class LimitedVolume(BaseVolume):
    async def create_quota_model(self) -> AbstractQuotaModel:
        return LimitedQuotaModel(self.mount_path)


async def test_a_quota_limit_their_model_reports_refuses_an_import_that_cannot_fit_before_any_byte(
    tmp_path: Path,
) -> None:
    volume = await base_volume(tmp_path / "vfroot", LimitedVolume)
    bridge = BackendAIVolume("limited", volume, fsync=False)
    vfid = our_vfid(await new_vfolder(volume))
    storage = BridgedVFolderStorage("vf", bridge, vfid)
    with pytest.raises(QuotaExceededError, match=r"limit 3\.0 MiB"):
        async with storage.reserve(4 * MiB):
            raise AssertionError("reserved beyond the limit")
    async with storage.reserve(2 * MiB):
        await storage.stream_upload("fits.bin", chunks(2 * MiB))


def _theirs(vfid: VFolderID) -> TheirVFolderID:
    return TheirVFolderID(QuotaScopeID.parse(vfid.quota_scope_id), vfid.folder_id)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
