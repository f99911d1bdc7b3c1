"""A directory tree of vfolders, laid out as the storage proxy lays them out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import StorageError, UnsafePathError
from ..storages.vfs import PART_SUFFIX, VFSStorage
from .base import StorageVolume, VFolderID, scope_pathname
from .quota import QuotaLedger


class VFSVolume(StorageVolume):
    """Vfolders at ``<mount>/<quota scope>/<id[0:2]>/<id[2:4]>/<id[4:]>``, as the Backend.AI storage proxy
    lays them out (a ``user:UUID`` scope's folder is the UUID's hex; see :func:`.base.scope_pathname`).

    Writes go through a :class:`VFSStorage` rooted at the vfolder (temp file
    and rename, symlinks resolved and refused if they lead out of the
    vfolder). Quota limits are kept by the volume; usage is measured from the
    tree, again for each import that starts while the scope is idle, so files
    others wrote since count too.
    """

    def __init__(
        self,
        name: str,
        mount: str | os.PathLike[str],
        *,
        read_only: bool = False,
        quotas: Mapping[str, int | None] | None = None,
        read_only_vfolders: Iterable[VFolderID] = (),
        fsync: bool = True,
    ) -> None:
        self.mount = Path(mount)
        self.fsync = fsync
        super().__init__(name, read_only=read_only, quotas=quotas, read_only_vfolders=read_only_vfolders)

    def _make_ledger(self) -> QuotaLedger:
        return QuotaLedger(self.describe(), self.measure_usage, remeasure=True)

    def describe(self) -> str:
        return f"volume {self.name} ({self.mount})"

    def vfolder_path(self, vfid: VFolderID) -> Path:
        h = vfid.folder_id.hex
        return self.mount / vfid.scope_pathname / h[0:2] / h[2:4] / h[4:]

    def _make_storage(self, vfid: VFolderID) -> VFSStorage:
        # Read-only is the volume's to decide (check_writable), as flags can change.
        return VFSStorage(str(vfid), self.vfolder_path(vfid), fsync=self.fsync)

    def _storage(self, vfid: VFolderID) -> VFSStorage:
        storage = super()._storage(vfid)
        assert isinstance(storage, VFSStorage)
        return storage

    async def sanitize_vfpath(self, vfid: VFolderID, relpath: str = "") -> Path:
        if relpath in ("", "."):
            return self.vfolder_path(vfid)
        storage = self._storage(vfid)
        try:
            return await asyncio.to_thread(storage.resolve_path, relpath, internal=True)
        except UnsafePathError as exc:
            reasons = "; ".join(f"{p!r} {r.replace('storage root', 'vfolder')}" for p, r in exc.offending)
            raise UnsafePathError([(relpath, f"{reasons} (in {self.describe_vfolder(vfid)})")]) from None

    async def delete_folder(self, vfid: VFolderID, relpath: str) -> None:
        self.check_writable(vfid)
        await self.sanitize_vfpath(vfid, relpath)
        async with self.quota.lock(vfid.quota_scope_id):
            await self._storage(vfid).delete_folder(relpath)
            if self.quota.limit(vfid.quota_scope_id) is not None:
                await self.quota.set_used(vfid.quota_scope_id, await self.measure_usage(vfid.quota_scope_id))

    async def mkdir(self, vfid: VFolderID, relpath: str) -> None:
        self.check_writable(vfid)
        path = await self.sanitize_vfpath(vfid, relpath)
        try:
            await asyncio.to_thread(path.mkdir, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"{relpath}: cannot create the folder in {self.describe_vfolder(vfid)}") from exc

    async def vfolder_exists(self, vfid: VFolderID) -> bool:
        return await asyncio.to_thread(self.vfolder_path(vfid).is_dir)

    async def create_vfolder(self, vfid: VFolderID) -> None:
        if self.read_only:
            self.check_writable(vfid)
        await asyncio.to_thread(self.vfolder_path(vfid).mkdir, parents=True, exist_ok=True)

    async def measure_usage(self, scope: str) -> int:
        return await asyncio.to_thread(_tree_size, self.mount / scope_pathname(scope))


def _tree_size(root: Path) -> int:
    """Bytes of the regular files under ``root``, not following symlinks, not counting in-flight temp files."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(PART_SUFFIX):
                    total += entry.stat(follow_symlinks=False).st_size
    return total
