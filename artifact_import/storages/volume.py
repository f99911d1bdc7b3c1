"""A user's vfolder as a storage: the design's ``VolumeStorageAdapter``."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence

from ..errors import StorageFileNotFoundError, UnsafePathError
from ..paths import path_problem
from ..volumes.base import AbstractVolume, VFolderID
from .base import AbstractStorage, FileInfo, PendingWrite


class VolumeStorageAdapter(AbstractStorage):
    """Implements :class:`AbstractStorage` on one vfolder of an :class:`AbstractVolume`.

    Every operation delegates to the volume (``stream_upload`` → ``add_file``,
    ``stream_download`` → ``read_file``, ``delete_file`` → ``delete_files``,
    ``get_file_info`` → ``sanitize_vfpath`` + ``stat_file``), so the volume's
    path rules and quota apply; writes keep the commit/abort guarantee of the
    volume's own storage. Not registered in a storage pool: a request builds
    one (``vfolder_storage_{request_id}``) and maps it with a
    :class:`StorageTarget`.
    """

    def __init__(self, name: str, volume: AbstractVolume, vfid: VFolderID, subpath: str = "") -> None:
        super().__init__(name, read_only=volume.is_read_only(vfid))
        self._name = name
        self._volume = volume
        self._vfid = vfid
        self._subpath = subpath.strip("/")
        if self._subpath and path_problem(self._subpath) is not None:
            raise UnsafePathError([(self._subpath, f"as a vfolder subpath: {path_problem(self._subpath)}")])

    @property
    def volume(self) -> AbstractVolume:
        return self._volume

    @property
    def vfid(self) -> VFolderID:
        return self._vfid

    def describe(self) -> str:
        where = f"/{self._subpath}" if self._subpath else ""
        return f"{self._name} ({self._volume.describe_vfolder(self._vfid)}{where})"

    def _rel(self, filepath: str) -> str:
        return f"{self._subpath}/{filepath}" if self._subpath else filepath

    def check_writable(self) -> None:
        self._volume.check_writable(self._vfid)

    async def preflight(self) -> None:
        self._volume.check_writable(self._vfid)
        await self._volume.check_vfolder(self._vfid)

    async def check_paths(self, paths: Sequence[str]) -> None:
        offending: list[tuple[str, str]] = []
        for path in paths:
            try:
                await self._volume.sanitize_vfpath(self._vfid, self._rel(path))
            except UnsafePathError as exc:
                offending.extend(exc.offending)
        if offending:
            raise UnsafePathError(offending)

    def reserve(self, nbytes: int) -> contextlib.AbstractAsyncContextManager[object]:
        return self._volume.quota.reserve(self._vfid.quota_scope_id, nbytes, what=self.describe())

    def subpath(self, path: str) -> VolumeStorageAdapter:
        return VolumeStorageAdapter(self._name, self._volume, self._vfid, self._rel(path.strip("/")))

    async def open_write(
        self, filepath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        return await self._volume.open_pending(self._vfid, self._rel(filepath), size_hint=size_hint, sha256=sha256)

    async def adopt(self, parked: str, filepath: str, *, incomplete: bool = False) -> PendingWrite | None:
        return await self._volume.adopt_parked(
            self._vfid, self._rel(parked), self._rel(filepath), incomplete=incomplete
        )

    def exclusive(
        self, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        return self._volume.exclusive(self._vfid, self._subpath, wait=wait, on_wait=on_wait)

    async def delete_folder(self, path: str) -> None:
        await self._volume.delete_folder(self._vfid, self._rel(path))

    async def stream_upload(self, filepath: str, data_stream: AsyncIterable[bytes]) -> FileInfo:
        info = await self._volume.add_file(self._vfid, self._rel(filepath), data_stream)
        return FileInfo(filepath, info.size)

    async def stream_download(self, filepath: str) -> AsyncIterator[bytes]:
        async for chunk in self._volume.read_file(self._vfid, self._rel(filepath)):
            yield chunk

    async def delete_file(self, filepath: str) -> None:
        await self._volume.delete_files(self._vfid, [self._rel(filepath)])

    async def list_files(self) -> AsyncIterator[FileInfo]:
        async for info in self._volume.list_files(self._vfid, self._subpath):
            yield info

    async def get_file_info(self, filepath: str) -> FileInfo:
        await self._volume.sanitize_vfpath(self._vfid, self._rel(filepath))
        info = await self._volume.stat_file(self._vfid, self._rel(filepath))
        if info is None:
            raise StorageFileNotFoundError(f"{filepath}: not found in {self.describe()}")
        return FileInfo(filepath, info.size, info.sha256)
