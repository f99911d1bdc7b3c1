"""Our :class:`~artifact_import.volumes.base.AbstractVolume` over one of the storage proxy's volumes.

Any of their backends (VFS, XFS, NetApp, Weka, …) becomes a volume of ours:
vfolder ids, path checks and quotas are theirs, and every write keeps our
guarantee. A file's bytes go through their ``add_file`` into a hidden temp
name beside the file (``.NAME.TOKEN.artifact-import-part``) and are moved into
place (their ``move_file``) only at commit; an abort ends the payload and
removes the temp file.

Their ``add_file`` hands the payload to a writer thread through an unbounded
queue and returns only once the payload ends: cancelled, or fed by a
generator that raises, it waits for ever. So the payload it is given always
ends normally (an abort ends it early), is kept at most ``lead`` bytes ahead of
what is on disk (its queue never holds a file), and a writer that stopped
(disk or quota full) is noticed from the file no longer growing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path, PurePosixPath

from ai.backend.storage.volumes.abc import AbstractVolume as TheirVolume

from .._aio import run_to_completion
from ..errors import (
    ArtifactImportError,
    QuotaExceededError,
    StorageError,
    StorageFileNotFoundError,
    UnsafePathError,
    VFolderNotFoundError,
)
from ..paths import path_problem
from ..storages.base import FileInfo, PendingWrite
from ..storages.sink import WRITEBACK_WINDOW
from ..storages.sink import _start_writeback as _writeback
from ..storages.vfs import PART_SUFFIX, VFSStorage
from ..units import human_bytes
from ..volumes.base import AbstractVolume, VFolderID
from ..volumes.quota import QuotaLedger
from ..volumes.vfs import _tree_size
from .errors import from_theirs
from .ids import their_scope, their_vfid

log = logging.getLogger(__name__)

#: Bytes handed to their writer thread beyond what has reached the file.
DEFAULT_LEAD = 32 << 20
#: Seconds the file may stop growing while bytes wait before the free space is looked at.
STALL_CHECK = 1.0
#: Seconds the file may stop growing while bytes wait before the write is given up.
DEFAULT_STALL_TIMEOUT = 120.0
#: Chunks waiting for their ``add_file`` to take them.
_QUEUE_DEPTH = 4
_READ_CHUNK = 1 << 20


class BackendAIVolume(AbstractVolume):
    """One of the storage proxy's volumes (``BaseVolume``, ``XfsVolume``, …) as a volume of ours.

    Quota scopes are theirs (``user:UUID``, ``project:UUID``): the limit their
    quota model reports is checked before any byte of an import, and a
    filesystem that fills up during a write ends the import with
    :class:`QuotaExceededError` naming the vfolder. Interrupted imports are
    not parked here (each starts over).
    """

    parks = False

    def __init__(
        self,
        name: str,
        volume: TheirVolume,
        *,
        read_only: bool = False,
        fsync: bool = True,
        lead: int = DEFAULT_LEAD,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
    ) -> None:
        self.backend = volume
        self.fsync = fsync
        self.lead = lead
        self.stall_timeout = stall_timeout
        super().__init__(name, read_only=read_only)

    def _make_ledger(self) -> QuotaLedger:
        # Measured again for each import that starts while the scope is idle: limits change, others write.
        return QuotaLedger(self.describe(), self._load_usage, remeasure=True)

    def describe(self) -> str:
        return f"volume {self.name} ({type(self.backend).__name__} at {self.backend.mount_path})"

    async def _load_usage(self, scope: str) -> int:
        """The scope's usage as their quota model reports it; its limit becomes the ledger's."""
        where = f"quota scope {scope!r} of {self.describe()}"
        try:
            usage = await self.backend.quota_model.describe_quota_scope(their_scope(scope))
        except ArtifactImportError:
            raise
        except Exception as exc:
            raise from_theirs(exc, where) from exc
        if usage is None:
            raise VFolderNotFoundError(f"{where} does not exist; create it first")
        # -1 (VFS: nothing enforced) or 0 (no hard limit on XFS, CephFS): unlimited.
        limit = usage.limit_bytes if usage.limit_bytes > 0 else None
        self.quota.set_limit(scope, limit)
        if usage.used_bytes >= 0:
            return int(usage.used_bytes)
        return await self.measure_usage(scope) if limit is not None else 0

    # -- paths -------------------------------------------------------------------------------------

    async def sanitize_vfpath(self, vfid: VFolderID, relpath: str = "") -> Path:
        relpath = relpath.strip("/")
        problem = path_problem(relpath) if relpath else None
        # The library's own files (manifest, part files) live in the reserved folder: only the volume's rules.
        if problem is not None and not problem.startswith("inside the reserved"):
            raise UnsafePathError([(relpath, f"{problem} (in {self.describe_vfolder(vfid)})")])
        theirs = their_vfid(vfid)
        try:
            # Theirs is synchronous and resolves symlinks on the filesystem: not on the event loop.
            return await asyncio.to_thread(self.backend.sanitize_vfpath, theirs, PurePosixPath(relpath or "."))
        except Exception as exc:
            raise from_theirs(exc, self.describe_vfolder(vfid), relpath or None) from exc

    def local_folder(self, vfid: VFolderID, subpath: str = "") -> VFSStorage:
        """The folder ``subpath`` of the vfolder as a directory storage of ours: for the destination's lock
        and the sweep of part files killed imports left (both filesystem operations their API lacks)."""
        root = self.backend.mangle_vfpath(their_vfid(vfid))
        return VFSStorage(f"{self.describe_vfolder(vfid)}", root / subpath if subpath else root, fsync=False)

    # -- the file operations ------------------------------------------------------------------------

    async def open_file(
        self, vfid: VFolderID, relpath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        target = PurePosixPath(relpath.strip("/"))
        if not target.name:
            raise UnsafePathError([(relpath, "empty name")])
        temp = target.parent / f".{target.name[:96]}.{secrets.token_hex(6)}{PART_SUFFIX}"
        local = await self.sanitize_vfpath(vfid, str(temp))
        await self.sanitize_vfpath(vfid, str(target))
        created = await asyncio.to_thread(_missing_folders, local.parent)
        if target.parent != PurePosixPath("."):
            try:
                await self.backend.mkdir(their_vfid(vfid), target.parent, parents=True, exist_ok=True)
            except Exception as exc:
                await asyncio.to_thread(_remove_empty, created)
                raise from_theirs(exc, self.describe_vfolder(vfid), str(target.parent)) from exc
        return _AddFileWrite(self, vfid, str(target), temp, local, created)

    async def read_file(self, vfid: VFolderID, relpath: str) -> AsyncIterator[bytes]:
        # Read here, not with their read_file: its reader thread queues the whole file when we read slower.
        path = await self.sanitize_vfpath(vfid, relpath)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise StorageFileNotFoundError(f"{relpath}: not found in {self.describe_vfolder(vfid)}") from None
        except OSError as exc:
            raise from_theirs(exc, self.describe_vfolder(vfid), relpath) from exc
        try:
            while chunk := await asyncio.to_thread(handle.read, _READ_CHUNK):
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def _delete_file(self, vfid: VFolderID, relpath: str) -> None:
        await self.sanitize_vfpath(vfid, relpath)
        try:
            await self.backend.delete_files(their_vfid(vfid), [PurePosixPath(relpath)])
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise from_theirs(exc, self.describe_vfolder(vfid), relpath) from exc

    async def stat_file(self, vfid: VFolderID, relpath: str) -> FileInfo | None:
        size = await asyncio.to_thread(_file_size, await self.sanitize_vfpath(vfid, relpath))
        return None if size is None else FileInfo(relpath, size)

    async def list_files(self, vfid: VFolderID, relpath: str = "") -> AsyncIterator[FileInfo]:
        root = await self.sanitize_vfpath(vfid, relpath)
        async for info in VFSStorage(self.describe_vfolder(vfid), root, fsync=False).list_files():
            yield info

    async def mkdir(self, vfid: VFolderID, relpath: str) -> None:
        self.check_writable(vfid)
        await self.sanitize_vfpath(vfid, relpath)
        try:
            await self.backend.mkdir(their_vfid(vfid), PurePosixPath(relpath), parents=True, exist_ok=True)
        except Exception as exc:
            raise from_theirs(exc, self.describe_vfolder(vfid), relpath) from exc

    async def vfolder_exists(self, vfid: VFolderID) -> bool:
        return await asyncio.to_thread(self.backend.mangle_vfpath(their_vfid(vfid)).is_dir)

    async def create_vfolder(self, vfid: VFolderID) -> None:
        self.check_writable(vfid)
        try:
            await self.backend.create_vfolder(their_vfid(vfid), exist_ok=True)
        except Exception as exc:
            raise from_theirs(exc, self.describe_vfolder(vfid)) from exc

    async def measure_usage(self, scope: str) -> int:
        return await asyncio.to_thread(_tree_size, self.backend.quota_model.mangle_qspath(their_scope(scope)))

    def exclusive(
        self, vfid: VFolderID, relpath: str, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        # An flock on the destination folder, as our directory storages take: the kernel drops it with its holder.
        return self.local_folder(vfid, relpath).exclusive(wait=wait, on_wait=on_wait)

    async def remove_leftovers(self, vfid: VFolderID, relpath: str = "") -> list[str]:
        """Remove the part files imports killed before their cleanup left under ``relpath`` (called under the
        destination's lock)."""
        return await self.local_folder(vfid, relpath).remove_leftovers()


class _AddFileWrite(PendingWrite):
    """A file written through their ``add_file`` under a temp name, moved into place on commit."""

    def __init__(
        self,
        volume: BackendAIVolume,
        vfid: VFolderID,
        path: str,
        temp: PurePosixPath,
        local: Path,
        created: list[Path],
    ) -> None:
        super().__init__(path)
        self._volume = volume
        self._vfid = vfid
        self._theirs = their_vfid(vfid)
        self._temp = temp
        self.local_path = local
        self._created = created
        self._where = volume.describe_vfolder(vfid)
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=_QUEUE_DEPTH)
        self._payload_ended = False
        self._ending = False
        self._flushed = False
        self._done = False
        #: Bytes known to be in the file (it is looked at only when the lead is used up).
        self._on_disk = 0
        #: Bytes of the file whose writeback was started (see _start_writeback).
        self._written_back = 0
        self._task = asyncio.ensure_future(volume.backend.add_file(self._theirs, temp, self._payload()))

    async def _payload(self) -> AsyncIterator[bytes]:
        try:
            while (chunk := await self._queue.get()) is not None:
                yield chunk
        finally:
            self._payload_ended = True

    # -- writing --------------------------------------------------------------------------------------

    async def write(self, chunk: bytes) -> None:
        if self._ending:
            raise StorageError(f"{self.path}: pending write already ended")
        await self._keep_lead(self.bytes_written + len(chunk))
        await self._put(chunk)
        self.bytes_written += len(chunk)
        if self._volume.fsync and self.bytes_written - self._written_back >= WRITEBACK_WINDOW:
            self._written_back = await asyncio.to_thread(_start_writeback, self.local_path, self._written_back)

    async def _put(self, item: bytes | None) -> None:
        """Queue ``item`` for their ``add_file``; raise its error if it stopped taking them."""
        if self._task.done():
            raise self._failure()
        try:
            self._queue.put_nowait(item)
            return
        except asyncio.QueueFull:
            pass
        put = asyncio.ensure_future(self._queue.put(item))
        try:
            await asyncio.wait({put, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not put.done():
                put.cancel()
        if put.cancelled() or not put.done():
            raise self._failure()

    def _failure(self) -> ArtifactImportError:
        """What ended their ``add_file`` before its payload did."""
        exc = None if self._task.cancelled() else self._task.exception()
        if exc is None:
            return StorageError(f"{self.path}: the volume stopped taking the file's bytes ({self._where})")
        return from_theirs(exc, self._where, self.path)

    async def _keep_lead(self, target: int) -> None:
        """Wait until the file holds all but ``lead`` bytes of ``target``; see the stalls meanwhile."""
        if target - self._on_disk <= self._volume.lead:
            return
        loop = asyncio.get_running_loop()
        since = loop.time()
        delay = 0.002
        while target - self._on_disk > self._volume.lead:
            if self._task.done():
                raise self._failure()
            size = await asyncio.to_thread(_size, self.local_path)
            now = loop.time()
            if size > self._on_disk:
                self._on_disk, since, delay = size, now, 0.002
                continue
            if now - since >= STALL_CHECK:
                await self._check_room(self.bytes_written - size)
            if now - since >= self._volume.stall_timeout:
                raise StorageError(
                    f"{self.path}: {self._where} took no byte for {self._volume.stall_timeout:g} s; "
                    "the import was aborted and nothing of it was kept"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.02)

    async def _check_room(self, waiting: int) -> None:
        """A stalled writer with more bytes waiting than the filesystem has room for has stopped: disk or
        quota full (theirs fails the write with ENOSPC or EDQUOT in its thread, and says nothing)."""
        assert self.local_path is not None
        free = await asyncio.to_thread(_free_bytes, self.local_path.parent)
        if free is not None and free < waiting:
            raise QuotaExceededError(
                f"{self.path}: {self._where} is full ({human_bytes(free)} free, {human_bytes(waiting)} of the "
                "file still to write): the import was aborted and nothing of it was kept. Free space in the "
                "vfolder's quota scope, or raise its quota, then import again.",
                path=self.path,
            )

    # -- ending ---------------------------------------------------------------------------------------

    async def flush(self) -> None:
        if self._flushed:
            return
        if self._done:
            raise StorageError(f"{self.path}: pending write already ended")
        self._ending = True
        await self._put(None)
        await self._join(raise_errors=True)
        assert self.local_path is not None
        size = await asyncio.to_thread(_size, self.local_path)
        if size != self.bytes_written:
            raise StorageError(
                f"{self.path}: {self._where} holds {size} of the {self.bytes_written} bytes written; "
                "the import was aborted and nothing of it was kept"
            )
        if self._volume.fsync:
            # A rename of a file not yet on disk can survive a power cut that its bytes do not.
            await asyncio.to_thread(_fsync, self.local_path)
        self._flushed = True

    async def _join(self, *, raise_errors: bool) -> None:
        """Wait for their ``add_file``, whose payload has ended.

        Its end marker is queued by then, so cancelling it only stops its wait
        for a writer thread that died (``join`` of a queue nobody drains): it
        then ends with the thread's error, or once the thread has finished.
        """
        loop = asyncio.get_running_loop()
        last, since = -1, loop.time()
        while not self._task.done():
            await asyncio.wait({self._task}, timeout=0.2)
            if self._task.done():
                break
            size = await asyncio.to_thread(_size, self.local_path) if self.local_path else 0
            if size != last:
                last, since = size, loop.time()
            elif loop.time() - since >= STALL_CHECK and self._payload_ended:
                self._task.cancel()
                await asyncio.wait({self._task})
        if raise_errors and not self._task.cancelled() and self._task.exception() is not None:
            raise self._failure()
        if not raise_errors and not self._task.cancelled():
            self._task.exception()  # retrieved: an abort's cause is reported by whoever aborted

    async def commit(self) -> None:
        if self._done:
            raise StorageError(f"{self.path}: pending write already ended")
        try:
            await self.flush()
            target = await self._volume.sanitize_vfpath(self._vfid, self.path)
            if await asyncio.to_thread(target.is_dir):
                raise StorageError(f"{self.path}: a folder of that name exists in {self._where}")
            try:
                await self._volume.backend.move_file(self._theirs, self._temp, PurePosixPath(self.path))
            except Exception as exc:
                raise from_theirs(exc, self._where, self.path) from exc
        except BaseException:
            await run_to_completion(self.abort())
            raise
        self._done = True

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._ending = True
        await run_to_completion(self._end())

    async def _end(self) -> None:
        # Their add_file returns only once its payload ends: end it now, whatever happened before.
        if not self._payload_ended:
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(None)
        await self._join(raise_errors=False)
        try:
            await self._volume.backend.delete_files(self._theirs, [self._temp])
        except FileNotFoundError:
            pass
        except Exception:
            log.warning("%s: could not remove the temp file %s from %s", self.path, self._temp, self._where)
        await asyncio.to_thread(_remove_empty, self._created)


def _file_size(path: Path) -> int | None:
    try:
        found = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_size if stat.S_ISREG(found.st_mode) else None


def _size(path: Path | None) -> int:
    if path is None:
        return 0
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _start_writeback(path: Path | None, start: int) -> int:
    """Start writing what their writer has put in the file since ``start`` to disk, so that the fsync before
    the commit waits only for the tail (as our own directory storage does); the new start."""
    if path is None:
        return start
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return start
    try:
        end = os.fstat(fd).st_size
        if end > start:
            _writeback(fd, start, end - start)
        return max(end, start)
    finally:
        os.close(fd)


def _free_bytes(folder: Path) -> int | None:
    try:
        st = os.statvfs(folder)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize if st.f_blocks else None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        missing.append(candidate)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    """Remove those of ``folders`` (deepest first) that are empty: a failed import leaves none behind."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                log.debug("%s: not removed: %s", folder, exc.strerror)
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return
