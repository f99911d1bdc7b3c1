"""A directory tree as a storage: temp file in the destination folder, rename on commit."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiofiles
import aiofiles.os
from aiofiles.threadpool.binary import AsyncBufferedIOBase

from ..errors import StorageError, StorageFileNotFoundError, UnsafePathError
from ..paths import path_problem
from ..streams import DEFAULT_CHUNK_SIZE
from .base import AbstractStorage, FileInfo, PendingWrite

#: Suffix of in-flight files; a crash can leave one behind, never a partial file under its real name.
PART_SUFFIX = ".artifact-import-part"


class VFSStorage(AbstractStorage):
    """Files under a local directory ``root``.

    Paths are checked twice: syntactically (no ``..``, absolute, NUL, ...) and
    after resolving symlinks, so a symlink planted in the tree cannot send a
    write outside ``root``.
    """

    def __init__(
        self,
        name: str,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        fsync: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(name, read_only=read_only)
        self.root = Path(root)
        self.fsync = fsync
        self.chunk_size = chunk_size

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    def resolve_path(self, filepath: str, *, internal: bool = False) -> Path:
        """The absolute path of ``filepath``, refusing anything outside ``root``.

        ``internal`` admits the reserved ``.artifact-import/`` folder, which
        only the library itself writes (manifest, staging).
        """
        problem = path_problem(filepath)
        if problem is not None and not (internal and problem.startswith("inside the reserved")):
            raise UnsafePathError([(filepath, problem)])
        root = os.path.realpath(self.root)
        target = os.path.realpath(os.path.join(root, filepath))
        if os.path.commonpath([root, target]) != root or target == root:
            raise UnsafePathError([(filepath, "resolves outside the storage root")])
        return Path(target)

    async def _resolve(self, filepath: str) -> Path:
        # realpath walks the tree with one syscall per segment: off the loop.
        return await asyncio.to_thread(self.resolve_path, filepath, internal=True)

    async def open_write(self, filepath: str, *, size_hint: int | None = None) -> PendingWrite:
        self.check_writable()
        target = await self._resolve(filepath)
        try:
            created = await asyncio.to_thread(_make_parents, target.parent)
        except OSError as exc:
            raise StorageError(f"{filepath}: cannot create its folder in {self.describe()}: {exc.strerror}") from exc
        temp = target.parent / f".{target.name}.{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
        try:
            handle = await aiofiles.open(temp, "xb")
        except OSError as exc:
            await asyncio.to_thread(_remove_empty_dirs, created)
            raise StorageError(f"{filepath}: cannot write in {self.describe()}: {exc.strerror}") from exc
        return _VFSPendingWrite(filepath, target, temp, handle, created, fsync=self.fsync)

    async def stream_download(self, filepath: str) -> AsyncIterator[bytes]:
        path = await self._resolve(filepath)
        try:
            handle = await aiofiles.open(path, "rb")
        except FileNotFoundError:
            raise StorageFileNotFoundError(f"{filepath}: not found in {self.describe()}") from None
        try:
            while chunk := await handle.read(self.chunk_size):
                yield chunk
        finally:
            await handle.close()

    async def delete_file(self, filepath: str) -> None:
        self.check_writable()
        path = await self._resolve(filepath)
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(path)

    async def get_file_info(self, filepath: str) -> FileInfo:
        path = await self._resolve(filepath)
        try:
            st = await aiofiles.os.stat(path)
        except FileNotFoundError:
            raise StorageFileNotFoundError(f"{filepath}: not found in {self.describe()}") from None
        return FileInfo(filepath, st.st_size)


class _VFSPendingWrite(PendingWrite):
    def __init__(
        self,
        path: str,
        target: Path,
        temp: Path,
        handle: AsyncBufferedIOBase,
        created_dirs: list[Path],
        *,
        fsync: bool,
    ) -> None:
        super().__init__(path)
        self._target = target
        self._temp = temp
        self._handle = handle
        self._created = created_dirs
        self._fsync = fsync
        self._closed = False
        self._done = False

    async def write(self, chunk: bytes) -> None:
        try:
            await self._handle.write(chunk)
        except OSError as exc:
            raise StorageError(f"{self.path}: write failed: {exc.strerror}") from exc
        self.bytes_written += len(chunk)

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._handle.close()

    async def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self.path}: pending write already ended")
        try:
            await self._handle.flush()
            if self._fsync:
                await asyncio.to_thread(os.fsync, self._handle.fileno())
            await self._close()
            if await aiofiles.os.path.isdir(self._target):
                raise StorageError(f"{self.path}: a folder of that name exists in the destination")
            await aiofiles.os.replace(self._temp, self._target)
        except OSError as exc:
            await self.abort()
            raise StorageError(f"{self.path}: commit failed: {exc.strerror}") from exc
        except BaseException:
            await self.abort()
            raise
        self._done = True

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await self._close()
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self._temp)
        await asyncio.to_thread(_remove_empty_dirs, self._created)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return what this call created, deepest last.

    The root itself may be among them (``--to`` a new directory), so an
    aborted import removes the directory it created.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    created: list[Path] = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue
        created.append(path)
    return created


def _remove_empty_dirs(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            # Not empty: another file (maybe from a concurrent write) lives there.
            return
