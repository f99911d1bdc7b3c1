"""A directory tree as a storage: temp file in the destination folder, rename on commit."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import itertools
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path

import aiofiles
import aiofiles.os

from .._aio import run_to_completion
from ..errors import (
    ArtifactImportError,
    InsufficientSpaceError,
    StorageError,
    StorageFileNotFoundError,
    UnsafePathError,
)
from ..model import FileResult, ResolvedArtifact
from ..paths import RESERVED_DIR, incomplete_path, is_reserved, path_problem
from ..streams import DEFAULT_CHUNK_SIZE, one_chunk
from ..units import human_bytes
from . import hflocal
from .base import AbstractStorage, FileInfo, PendingWrite
from .sink import DIRECT_MIN, FileSink

log = logging.getLogger(__name__)

#: Suffix of in-flight files of the library's own (manifest, staging), and of every in-flight file in earlier
#: versions: a crash can leave one behind, never a partial file under its real name; the next import removes them.
PART_SUFFIX = ".artifact-import-part"


class VFSStorage(AbstractStorage):
    """Files under a local directory ``root``.

    A file being written lives at ``.artifact-import/partial/incomplete/PATH``
    until it commits (see :meth:`open_write`); one import at a time holds the
    folder's lock (:meth:`exclusive`).

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
        hf_metadata: bool = True,
    ) -> None:
        """``hf_metadata``: at the end of an import from the Hub, write what ``hf download --local-dir``
        keeps (see :mod:`.hflocal`), so that it takes the files for downloaded."""
        super().__init__(name, read_only=read_only)
        self.root = Path(root)
        self.fsync = fsync
        self.chunk_size = chunk_size
        self.hf_metadata = hf_metadata
        self._folders = _FolderLedger(self.root)
        self.journals_writes = True
        #: Each folder's real path, checked inside ``root`` once (see :meth:`_resolve_fast`).
        self._real_folders: dict[str, Path] = {}
        self._dir_strings: dict[Path, str] = {}

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[object]:
        """Refuse now an import the filesystem has no room for, rather than filling it half way."""
        free = await asyncio.to_thread(_free_bytes, self.root)
        if free is not None and nbytes > free:
            raise InsufficientSpaceError(
                f"{self.describe()}: the import needs {human_bytes(nbytes)} but its filesystem has "
                f"{human_bytes(free)} free. Free space there, choose another destination, or import fewer "
                "files (--include/--exclude).",
            )
        yield None

    def resolve_path(self, filepath: str, *, internal: bool = False) -> Path:
        """The absolute path of ``filepath``, refusing anything outside ``root``.

        ``internal`` admits the reserved ``.artifact-import/`` folder, which
        only the library itself writes (manifest, staging).
        """
        problem = path_problem(filepath)
        if problem is not None and not (internal and problem.startswith("inside the reserved")):
            raise UnsafePathError([(filepath, problem)])
        root = os.path.realpath(self.root)
        try:
            target = os.path.realpath(os.path.join(root, filepath))
        except OSError:
            # A link that vanished between realpath's lstat and readlink: the tree is changing under us.
            raise UnsafePathError([(filepath, "changed while it was checked (a folder replaced by a link?)")]) from None
        if os.path.commonpath([root, target]) != root or target == root:
            raise UnsafePathError([(filepath, "resolves outside the storage root")])
        return Path(target)

    async def check_paths(self, paths: Sequence[str]) -> None:
        def check() -> None:
            offending: list[tuple[str, str]] = []
            for path in paths:
                try:
                    self.resolve_path(path)
                except UnsafePathError as exc:
                    offending.extend(exc.offending)
            if offending:
                raise UnsafePathError(offending)

        await asyncio.to_thread(check)

    async def _resolve(self, filepath: str) -> Path:
        # realpath walks the tree with one syscall per segment: off the loop.
        return await asyncio.to_thread(self.resolve_path, filepath, internal=True)

    async def _resolve_fast(self, filepath: str) -> Path:
        """Where the write path puts ``filepath``: its folder resolved as :meth:`resolve_path` does, once per
        folder (a thread hop and a walk per file was most of the cost of a repository of many small files).

        The file's own name is not followed (a link there is replaced by the rename, never written through),
        and every folder is opened again without following links when the file is (see :func:`_open_folder`):
        a folder swapped for a link after it was resolved is refused then, not followed.
        """
        problem = path_problem(filepath)
        if problem is not None and not problem.startswith("inside the reserved"):
            raise UnsafePathError([(filepath, problem)])
        folder, _, name = filepath.rpartition("/")
        real = self._real_folders.get(folder)
        if real is None:
            real = await asyncio.to_thread(self._resolve_folder, folder)
            if len(self._real_folders) >= _FOLDER_CACHE:
                self._real_folders.clear()
            self._real_folders[folder] = real
        return real / name

    def _resolve_folder(self, folder: str) -> Path:
        root = os.path.realpath(self.root)
        try:
            target = os.path.realpath(os.path.join(root, folder)) if folder else root
        except OSError:
            raise UnsafePathError([(folder, "changed while it was checked (a folder replaced by a link?)")]) from None
        if os.path.commonpath([root, target]) != root:
            raise UnsafePathError([(folder, "resolves outside the storage root")])
        return Path(target)

    def subpath(self, path: str) -> VFSStorage:
        problem = path_problem(path.strip("/"))
        if problem is not None:
            raise UnsafePathError([(path, problem)])
        return VFSStorage(
            self.name,
            self.root / path.strip("/"),
            read_only=self.read_only,
            fsync=self.fsync,
            chunk_size=self.chunk_size,
            hf_metadata=self.hf_metadata,
        )

    async def publish(self, artifact: ResolvedArtifact, files: Sequence[FileResult]) -> None:
        """Write the metadata ``hf download --local-dir`` keeps for each file (see :mod:`.hflocal`).

        Best effort: without it huggingface_hub only checks the files again, so a failure here is a warning,
        never a failed import. Not synced to disk one by one: losing it costs a re-check, nothing else.
        """
        if not self.hf_metadata:
            return
        written = hflocal.download_metadata(artifact, files)
        first = next(written, None)
        if first is None:
            return
        plain = VFSStorage(self.name, self.root, fsync=False, chunk_size=self.chunk_size, hf_metadata=False)

        async def put(path: str, body: bytes, skipped: bool = False) -> None:
            if skipped:
                # A file the import did not touch: its metadata stays if it already says the same.
                with contextlib.suppress(ArtifactImportError):
                    old = b"".join([chunk async for chunk in plain.stream_download(path)])
                    if hflocal.says_the_same(old, body):
                        return
            await plain.stream_upload(path, one_chunk(body))

        try:
            # A thousand at a time, each folder's in one thread hop (a file's own open, write and rename each
            # took two hops and two walks from the root: minutes of a commit of 200,000 files).
            pending = itertools.chain([first], written)
            while batch := list(itertools.islice(pending, _BATCH)):
                groups: dict[Path, list[tuple[str, bytes, bool]]] = {}
                for result, path, body in batch:
                    where = await self._resolve_fast(path)
                    groups.setdefault(where.parent, []).append((where.name, body, result.skipped))
                for folder, items in groups.items():
                    await run_to_completion(asyncio.to_thread(_write_small_batch, self.root, folder, items))
            path, body = hflocal.GITIGNORE
            if not await asyncio.to_thread(os.path.lexists, self.root / path):
                await put(path, body)
        except (ArtifactImportError, OSError) as exc:
            log.warning(
                "%s: could not write the download metadata hf download keeps in %s/ (%s); it will check the files "
                "again instead of taking them as downloaded",
                self.describe(),
                hflocal.BOOKKEEPING_DIR,
                exc,
            )

    async def open_write(
        self, filepath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        """A file's bytes go to its journal location (``.artifact-import/partial/incomplete/PATH``) from the
        first one, and are renamed into place at commit: whatever ends this process (SIGKILL included), the
        next import finds them there and goes on. The library's own files use a hidden temp file beside."""
        self.check_writable()
        target = await self._resolve_fast(filepath)
        journal = None if is_reserved(filepath) else await self._resolve_fast(incomplete_path(filepath))
        where = journal if journal is not None else target
        folders = self._folders.chain(where.parent)
        if size_hint is not None and size_hint <= SMALL_MAX:
            # Opened, written and closed in one hop at flush: a small file's bytes wait in memory till then.
            await self._folders.hold(folders)
            temp = journal if journal is not None else target.parent / _temp_name(target.name, _name_max(target.parent))
            pending = _VFSPendingWrite(self, filepath, target, temp, None, folders)
            pending.replaces = journal is not None
            if journal is None:
                pending.journal = self._relative(temp)  # a file's own is derived from its path (prepare_commit)
            return pending
        direct = size_hint is not None and size_hint >= DIRECT_MIN
        opening = asyncio.ensure_future(self._open_temp(target, folders, journal, direct))
        try:
            temp, handle = await asyncio.shield(opening)
        except asyncio.CancelledError:
            # The open goes on in its thread; let it finish, then undo it, so
            # a cancelled import cannot leave a temp file behind.
            await run_to_completion(self._undo_open(opening, folders))
            raise
        except OSError as exc:
            await self._folders.release(folders, remove_empty=True)
            raise StorageError(f"{filepath}: cannot write in {self.describe()}: {exc.strerror}") from exc
        pending = _VFSPendingWrite(self, filepath, target, temp, handle, folders)
        # The library's own files (the manifest) wait under their temp name: a commit cut short moves it too.
        if journal is None:
            pending.journal = self._relative(temp)
        return pending

    def _relative(self, path: Path) -> str:
        return path.relative_to(os.path.realpath(self.root)).as_posix()

    def _dir_string(self, folder: Path) -> str:
        """``str(folder)``, one string for every file of the folder."""
        text = self._dir_strings.get(folder)
        if text is None:
            if len(self._dir_strings) >= _FOLDER_CACHE:
                self._dir_strings.clear()
            text = self._dir_strings[folder] = str(folder)
        return text

    async def _undo_open(self, opening: asyncio.Future[tuple[Path, FileSink]], folders: tuple[Path, ...]) -> None:
        with contextlib.suppress(Exception):
            temp, handle = await opening
            await handle.close()
            await aiofiles.os.remove(temp)
        await self._folders.release(folders, remove_empty=True)

    async def _open_temp(
        self, target: Path, folders: tuple[Path, ...], temp: Path | None, direct: bool
    ) -> tuple[Path, FileSink]:
        await self._folders.hold(folders)
        if temp is not None:
            # One import per destination at a time (its lock), so this name is this write's own; what an
            # earlier import left there and this one did not adopt is replaced.
            fd = await asyncio.to_thread(_open_file_within, self.root, temp, "replace")
            return temp, FileSink(fd, direct=direct)
        temp = target.parent / _temp_name(target.name, _name_max(target.parent))
        fd = await asyncio.to_thread(_open_file_within, self.root, temp, "new")
        return temp, FileSink(fd, direct=direct)

    async def commit_writes(self, writes: Sequence[PendingWrite]) -> None:
        """Make ``writes`` visible: renamed into place folder by folder, up to :data:`_BATCH` renames in one
        thread hop (a hop per file, and each file's folders opened again from the root, was most of a commit of
        many files); the small files made durable first, by one ``syncfs`` when there are many. Every write is
        tried; the first failure is raised once all are done, the failed ones aborted."""
        ours: list[_VFSPendingWrite | _VFSParkedWrite] = []
        for write in writes:
            if isinstance(write, _VFSPendingWrite | _VFSParkedWrite) and write._storage is self:
                if write._done:
                    raise StorageError(f"{write.path}: pending write already ended")
                ours.append(write)
            else:
                await write.commit()
        for write in ours:
            if isinstance(write, _VFSPendingWrite):
                await write.flush()
        failures = await self._move_all(ours)
        first: BaseException | None = None
        released: list[tuple[tuple[Path, ...], bool]] = []
        for write in ours:
            problem = failures.get(id(write))
            if problem is None:
                write._done = True
                if isinstance(write, _VFSPendingWrite):
                    # The journal folders this write made (empty now) go; the target's stay, holding the file.
                    released.append((write._folders, str(write._folders[0]) != write._target_dir))
                continue
            if isinstance(write, _VFSPendingWrite):
                await write.abort()
            first = first or problem
        await self._folders.release_many(released)
        if first is not None:
            raise first

    async def park_writes(self, parks: Sequence[tuple[PendingWrite, str]]) -> list[bool]:
        """Park many writes at once (see :meth:`commit_writes`): what an interrupted import of many files
        keeps is renamed folder by folder, so that stopping takes seconds whatever the count."""
        done: dict[int, bool] = {}
        moves: list[tuple[_VFSPendingWrite, str]] = []
        for write, path in parks:
            if isinstance(write, _VFSParkedWrite):
                done[id(write)] = not write._done  # still parked where it was
            elif not isinstance(write, _VFSPendingWrite) or write._storage is not self:
                done[id(write)] = await write.park(path)
            elif write._done:
                done[id(write)] = False
            else:
                try:
                    await write.flush()
                    moves.append((write, str(await self._resolve_fast(path))))
                except (OSError, StorageError):
                    log.warning("%s: could not be kept for a later import; removed", write.path, exc_info=True)
                    done[id(write)] = False
        targets = {id(write): parked for write, parked in moves}
        failures = await self._move_all([write for write, _ in moves], targets)
        released: list[tuple[tuple[Path, ...], bool]] = []
        for write, _ in moves:
            problem = failures.get(id(write))
            if problem is not None:
                log.warning("%s: could not be kept for a later import (%s); removed", write.path, problem)
                done[id(write)] = False
                continue
            write._done = True
            done[id(write)] = True
            released.append((write._folders, True))
        await self._folders.release_many(released)
        return [done[id(write)] for write, _ in parks]

    async def keep_in_place(self, writes: Sequence[PendingWrite]) -> list[bool]:
        """A write of an artifact's file receives its bytes at its journal location (see :meth:`open_write`),
        which the next import looks at: ended there, made durable (one ``syncfs`` for them all), not renamed.
        A SIGTERM on an import of 200,000 files spent seconds renaming the verified ones into the partial
        folder, past a container's grace period. Parked files adopted from there stay where they are."""
        kept: dict[int, bool] = {}
        ours: list[_VFSPendingWrite] = []
        for write in writes:
            if isinstance(write, _VFSParkedWrite) and write._storage is self:
                kept[id(write)] = not write._done
            elif (
                isinstance(write, _VFSPendingWrite)
                and write._storage is self
                and not write._done
                and await write.prepare_commit() == incomplete_path(write.path)
            ):
                try:
                    await write.flush()
                except StorageError:
                    kept[id(write)] = False
                    continue
                ours.append(write)
        if any(w.needs_sync for w in ours):
            await run_to_completion(asyncio.to_thread(_syncfs, self.root))
        for write in ours:
            write.needs_sync = False
            write._done = True
            kept[id(write)] = True
        await self._folders.release_many([(write._folders, False) for write in ours])
        return [kept.get(id(write), False) for write in writes]

    async def _move_all(
        self, writes: Sequence[_VFSPendingWrite | _VFSParkedWrite], targets: Mapping[int, str] | None = None
    ) -> dict[int, BaseException]:
        """Rename each write's bytes to its target (or to ``targets[id(write)]``, an absolute path), folder by
        folder; the failures by ``id(write)``. Writes whose bytes are not yet durable are made so first. The
        names of a batch are made for that batch only: a commit of 200,000 files holds no list of them all."""
        unsynced = [w for w in writes if isinstance(w, _VFSPendingWrite) and w.needs_sync]
        if len(unsynced) >= _SYNCFS_MIN:
            await run_to_completion(asyncio.to_thread(_syncfs, self.root))
            for late in unsynced:
                late.needs_sync = False
        del unsynced

        def ends(write: _VFSPendingWrite | _VFSParkedWrite) -> tuple[str, str]:
            target = targets[id(write)] if targets is not None else write.target_path
            return write.temp_path, target

        groups: dict[tuple[str, str], list[_VFSPendingWrite | _VFSParkedWrite]] = {}
        for write in writes:
            source, target = ends(write)
            groups.setdefault((os.path.dirname(source), os.path.dirname(target)), []).append(write)
        failures: dict[int, BaseException] = {}
        for (source_folder, target_folder), members in groups.items():
            # Held (created if need be) once for the group; removed after if it was made for nothing.
            held = self._folders.chain(Path(target_folder))
            await self._folders.hold(held)
            try:
                for at in range(0, len(members), _BATCH):
                    batch = members[at : at + _BATCH]
                    items = [
                        (os.path.basename(source), os.path.basename(target), bool(getattr(w, "needs_sync", False)))
                        for w in batch
                        for source, target in (ends(w),)
                    ]
                    try:
                        problems = await run_to_completion(
                            asyncio.to_thread(_rename_batch, self.root, source_folder, target_folder, items)
                        )
                    except (OSError, UnsafePathError) as exc:
                        # The folder itself could not be opened (gone, or swapped for a link): none of these moved.
                        for write in batch:
                            failures[id(write)] = (
                                exc if isinstance(exc, UnsafePathError) else StorageError(f"{write.path}: {exc}")
                            )
                        continue
                    for index, _, problem in problems:
                        failures[id(batch[index])] = StorageError(f"{batch[index].path}: {problem}")
                    for write in batch:
                        if id(write) not in failures and isinstance(write, _VFSPendingWrite):
                            write.needs_sync = False
            finally:
                moved = any(id(w) not in failures for w in members)
                await self._folders.release(held, remove_empty=not moved)
        return failures

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
        # Staged copies live in folders this storage made; do not leave them empty behind.
        await self._folders.prune((path.parent, *path.parent.parents))

    async def adopt(self, parked: str, filepath: str, *, incomplete: bool = False) -> PendingWrite | None:
        self.check_writable()
        source = await self._resolve(parked)
        # As open_write resolves it: the folder once, the name itself not followed (the rename replaces a link).
        target = await self._resolve_fast(filepath)
        try:
            st = await aiofiles.os.stat(source)
        except FileNotFoundError:
            return None
        if not incomplete:
            write = _VFSParkedWrite(self, filepath, source, target, st.st_size)
            write.stamp = stamp_of(st)
            write.journal = parked
            return write
        folders = (target.parent, *target.parent.parents)
        await self._folders.hold(folders)
        try:
            fd = await asyncio.to_thread(_open_file_within, self.root, source, "append")
            handle = FileSink(fd, st.st_size)
        except (OSError, UnsafePathError):
            await self._folders.release(folders, remove_empty=True)
            return None
        pending = _VFSPendingWrite(self, filepath, target, source, handle, folders)
        pending.bytes_written = st.st_size
        pending.journal = parked
        return pending

    async def adopt_many(self, parked: Sequence[tuple[str, str]]) -> list[PendingWrite | None]:
        """:meth:`adopt` each ``(parked, filepath)`` whole, with one thread hop per folder of parked files (up to
        :data:`_BATCH` names) instead of a walk from the root and a stat per file: resuming 100,000 parked files
        took longer than fetching them."""
        self.check_writable()
        found = await self._stat_many([where for where, _ in parked])
        adopted: list[PendingWrite | None] = []
        for where, path in parked:
            held = found.get(where)
            if held is None:
                adopted.append(None)
                continue
            try:
                write = _VFSParkedWrite(
                    self, path, await self._resolve_fast(where), await self._resolve_fast(path), held[0]
                )
            except (UnsafePathError, StorageError):
                adopted.append(None)
                continue
            write.stamp = held[1]
            if where != incomplete_path(path):  # the usual place is derived, not kept (see prepare_commit)
                write.journal = where
            adopted.append(write)
        return adopted

    async def file_infos(self, paths: Sequence[str]) -> dict[str, FileInfo]:
        """The regular files among ``paths``, one thread hop per folder (see :meth:`_stat_many`): a thread hop
        and a walk from the root per file made looking over 200,000 files take minutes."""
        found = await self._stat_many(paths)
        return {path: FileInfo(path, size, stamp=stamp) for path, (size, stamp) in found.items()}

    async def _stat_many(self, paths: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The size and stamp of each of ``paths`` that is a regular file, by path: folders resolved as the write path
        resolves them (once each, see :meth:`_resolve_fast`) and opened without following links, names not
        followed (a link is left out, as a missing file is)."""
        groups: dict[str, list[tuple[str, str]]] = {}
        for path in paths:
            try:
                where = await self._resolve_fast(path)
            except UnsafePathError:
                continue
            groups.setdefault(self._dir_string(where.parent), []).append((path, where.name))
        found: dict[str, tuple[int, str]] = {}
        for folder, members in groups.items():
            for at in range(0, len(members), _BATCH):
                batch = members[at : at + _BATCH]
                try:
                    stats = await asyncio.to_thread(_stat_batch, self.root, folder, [name for _, name in batch])
                except (OSError, UnsafePathError):
                    continue  # the folder is gone, or is a link now: none of these is there
                found.update((path, st) for (path, _), st in zip(batch, stats, strict=True) if st is not None)
        return found

    async def move(self, src: str, dst: str) -> bool:
        source = await self._resolve(src)
        target = await self._resolve(dst)
        folders = (target.parent, *target.parent.parents)
        await self._folders.hold(folders)
        try:
            await asyncio.to_thread(_replace_within, self.root, source, target)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise StorageError(f"{dst}: cannot move it into place: {exc.strerror}") from exc
        finally:
            await self._folders.release(folders, remove_empty=False)
        await self._folders.prune((source.parent, *source.parent.parents))
        return True

    async def move_many(self, moves: Sequence[tuple[str, str]]) -> int:
        """:meth:`move` each ``(src, dst)``, folder by folder, up to :data:`_BATCH` in a thread hop: completing the
        commit of 200,000 files a killed import left took a hop and two walks from the root per file."""
        groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for src, dst in moves:
            source, target = await self._resolve_fast(src), await self._resolve_fast(dst)
            groups.setdefault((str(source.parent), str(target.parent)), []).append((source.name, target.name))
        moved = 0
        for (source_folder, target_folder), names in groups.items():
            held = self._folders.chain(Path(target_folder))
            await self._folders.hold(held)
            try:
                for at in range(0, len(names), _BATCH):
                    batch = [(a, b, False) for a, b in names[at : at + _BATCH]]
                    try:
                        problems = await run_to_completion(
                            asyncio.to_thread(_rename_batch, self.root, source_folder, target_folder, batch)
                        )
                    except FileNotFoundError:
                        continue  # the whole folder moved already
                    except OSError as exc:
                        raise StorageError(f"{target_folder}: cannot move files into place: {exc.strerror}") from exc
                    for index, number, problem in problems:
                        if number != errno.ENOENT:  # not there: moved already
                            raise StorageError(f"{names[at + index][1]}: cannot move it into place: {problem}")
                    moved += len(batch) - len(problems)
            finally:
                await self._folders.release(held, remove_empty=False)
            await self._folders.prune(self._folders.chain(Path(source_folder)))
        return moved

    async def remove_leftovers(self) -> list[str]:
        """Hidden ``.*.artifact-import-part`` files killed imports left: beside the files (earlier versions)
        or in the reserved folder (a manifest being written). Called under the destination's lock, when no
        writer of this storage is alive."""

        def sweep() -> list[str]:
            removed: list[str] = []
            for folder, _, files in os.walk(self.root):
                for name in files:
                    if name.startswith(".") and name.endswith(PART_SUFFIX):
                        path = os.path.join(folder, name)
                        with contextlib.suppress(FileNotFoundError):
                            os.remove(path)
                            removed.append(Path(path).relative_to(self.root).as_posix())
            return sorted(removed)

        removed = await asyncio.to_thread(sweep)
        if removed:
            log.info("%s: removed %d part file(s) an earlier, killed import left", self.describe(), len(removed))
        return removed

    @contextlib.asynccontextmanager
    async def exclusive(
        self, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> AsyncIterator[object]:
        """An OS lock (``flock``) on the destination folder, created if need be; the kernel drops it when the
        holder dies, so a lock left by a killed import is simply taken."""
        folders = (self.root, *self.root.parents)
        await self._folders.hold(folders)
        fd = -1
        try:
            fd = await _lock_folder(self.root, wait, on_wait, self.describe())
            yield fd
        finally:
            if fd >= 0:
                os.close(fd)  # releases the lock
            await self._folders.release(folders, remove_empty=True)

    async def delete_folder(self, path: str) -> None:
        folder = await self._resolve(path)
        await asyncio.to_thread(shutil.rmtree, folder, ignore_errors=True)
        await self._folders.prune((folder.parent, *folder.parent.parents))

    async def list_files(self) -> AsyncIterator[FileInfo]:
        # One directory per thread hop: a huge tree never becomes one list in memory.
        pending = [self.root]
        while pending:
            folder = pending.pop()
            try:
                entries = await asyncio.to_thread(_scan, folder)
            except FileNotFoundError:
                continue
            for path, is_dir, size in entries:
                rel = path.relative_to(self.root).as_posix()
                if rel == RESERVED_DIR:
                    continue
                if is_dir:
                    pending.append(path)
                elif not path.name.endswith(PART_SUFFIX):
                    yield FileInfo(rel, size)

    async def get_file_info(self, filepath: str) -> FileInfo:
        path = await self._resolve(filepath)
        try:
            st = await aiofiles.os.stat(path)
        except FileNotFoundError:
            raise StorageFileNotFoundError(f"{filepath}: not found in {self.describe()}") from None
        return FileInfo(filepath, st.st_size, stamp=stamp_of(st))


class _FolderLedger:
    """Which folders pending writes use, so an abort removes only folders nobody needs.

    A folder this storage created is removed when the last pending write
    using it is aborted and it is empty: a failed import leaves no empty
    folders behind, and never pulls a folder from under a concurrent write.
    Creating and removing folders take turns under one lock, and neither is
    interrupted by a cancellation half-way.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._users: collections.Counter[Path] = collections.Counter()
        self._created: set[Path] = set()
        self._lock = asyncio.Lock()
        self._chains: dict[Path, tuple[Path, ...]] = {}

    def chain(self, folder: Path) -> tuple[Path, ...]:
        """``folder`` and its ancestors, one tuple per folder (many files of one folder share it)."""
        chain = self._chains.get(folder)
        if chain is None:
            if len(self._chains) >= _FOLDER_CACHE:
                self._chains.clear()
            chain = self._chains[folder] = (folder, *folder.parents)
        return chain

    async def hold(self, folders: tuple[Path, ...]) -> None:
        """Count ``folders`` (a folder and its ancestors) as in use, creating what is missing.

        They count as in use even if creating them fails: ``release`` them anyway. Folders another write
        holds exist already (a folder is removed only once nobody holds it): no thread hop for those.
        """
        if all(self._users[f] > 0 for f in folders):
            self._users.update(folders)
            return
        async with self._lock:
            try:
                self._created.update(await asyncio.to_thread(_make_parents, folders[0], self._root))
            finally:
                # Counted once they exist (the check above takes a counted folder for one that exists).
                self._users.update(folders)

    async def release(self, folders: tuple[Path, ...], *, remove_empty: bool) -> None:
        await run_to_completion(self._release(folders, remove_empty, held=True))

    async def release_many(self, chains: Sequence[tuple[tuple[Path, ...], bool]]) -> None:
        """:meth:`release` each ``(folders, remove_empty)`` in one turn of the lock: a commit or a park of
        200,000 files released them one task and one turn each, seconds of a SIGTERM's grace period."""
        await run_to_completion(self._release_many(chains))

    async def _release_many(self, chains: Sequence[tuple[tuple[Path, ...], bool]], *, held: bool = True) -> None:
        async with self._lock:
            # Many files share one chain (see chain): each distinct one is looked at once, after every count.
            distinct: dict[int, tuple[tuple[Path, ...], bool]] = {}
            for folders, remove_empty in chains:
                if held:
                    self._users.subtract(folders)
                kept = distinct.get(id(folders))
                distinct[id(folders)] = (folders, remove_empty or (kept is not None and kept[1]))
            for folders, remove_empty in distinct.values():
                unused = [f for f in folders if self._users[f] <= 0]
                for folder in unused:
                    self._users.pop(folder, None)
                removable = [f for f in unused if f in self._created]
                if remove_empty and removable:
                    self._created.difference_update(await asyncio.to_thread(_remove_empty_dirs, removable))

    async def prune(self, folders: tuple[Path, ...]) -> None:
        """Remove those of ``folders`` this storage created, if empty and unused."""
        await run_to_completion(self._release(folders, True, held=False))

    async def _release(self, folders: tuple[Path, ...], remove_empty: bool, *, held: bool) -> None:
        await self._release_many([(folders, remove_empty)], held=held)


class _FolderPaths(PendingWrite):
    """Where a write of this storage lands and where its bytes wait, kept as folder strings shared by the files
    of a folder and names derived from ``path`` where they are its own: a Path a file (twice) was half a
    kilobyte of every file of a repository of 200,000."""

    __slots__ = ("_target_dir", "_temp_dir", "_temp_name")

    def __init__(self, storage: VFSStorage, path: str, target: Path, temp: Path) -> None:
        super().__init__(path)
        name = path.rpartition("/")[2]
        if target.name != name:
            raise StorageError(f"{path}: resolves to another name ({target.name})")
        self._target_dir = storage._dir_string(target.parent)
        self._temp_dir = storage._dir_string(temp.parent)
        self._temp_name: str | None = None if temp.name == name else temp.name

    @property
    def target_path(self) -> str:
        return os.path.join(self._target_dir, self.path.rpartition("/")[2])

    @property
    def temp_path(self) -> str:
        return os.path.join(self._temp_dir, self._temp_name or self.path.rpartition("/")[2])

    @property
    def local_path(self) -> Path | None:
        # Derived, not kept (see the class).
        return self._local_path or Path(self.temp_path)

    @local_path.setter
    def local_path(self, value: Path | None) -> None:
        self._local_path = value


class _VFSPendingWrite(_FolderPaths):
    """Bytes on their way to ``temp`` (the journal location), renamed to ``target`` at commit.

    A small file (``handle`` None: see :data:`SMALL_MAX`) keeps its bytes in
    memory and is opened, written and closed in one hop at :meth:`flush`;
    it is made durable (``needs_sync``) with the other small files of its
    commit, by one ``syncfs`` rather than an fsync each.
    """

    __slots__ = (
        "_closed", "_done", "_folders", "_fsync", "_handle", "_held", "_ledger", "_storage", "needs_sync", "replaces",
    )  # fmt: skip

    def __init__(
        self,
        storage: VFSStorage,
        path: str,
        target: Path,
        temp: Path,
        handle: FileSink | None,
        folders: tuple[Path, ...],
    ) -> None:
        super().__init__(storage, path, target, temp)
        self._storage = storage
        self._handle = handle
        self._ledger = storage._folders
        self._folders = folders
        self._fsync = storage.fsync
        self._closed = False
        self._done = False
        #: A small file's bytes, written at flush.
        self._held: list[bytes] | None = [] if handle is None else None
        #: Whether ``temp`` may already exist (the journal location: replaced) or must not (a temp name).
        self.replaces = True
        #: Written and closed, not yet fsynced: made durable before it becomes visible or is parked.
        self.needs_sync = False

    @property
    def temp(self) -> Path:
        return Path(self.temp_path)

    async def prepare_commit(self) -> str | None:
        # A file's journal location is derived from its path rather than kept (see __init__).
        if self.journal is None and self._temp_name is None and not is_reserved(self.path):
            return incomplete_path(self.path)
        return self.journal

    async def write(self, chunk: bytes) -> None:
        if self._held is not None:
            self._held.append(chunk)
            self.bytes_written += len(chunk)
            if self.bytes_written > SMALL_MAX:
                await self._open_now()  # larger than its listed size said: written as it comes from now on
            return
        assert self._handle is not None
        try:
            await self._handle.write(chunk)
            self.bytes_written += len(chunk)
        except OSError as exc:
            raise StorageError(f"{self.path}: write failed: {exc.strerror}") from exc

    async def _open_now(self) -> None:
        held, self._held = self._held or [], None
        mode = "replace" if self.replaces else "new"
        try:
            fd = await run_to_completion(asyncio.to_thread(_open_file_within, self._storage.root, self.temp, mode))
            self._handle = FileSink(fd, direct=False)
            for chunk in held:
                await self._handle.write(chunk)
        except OSError as exc:
            raise StorageError(f"{self.path}: write failed: {exc.strerror}") from exc

    async def _close(self) -> None:
        if not self._closed:
            self._closed = True
            self._held = None
            if self._handle is not None:
                await self._handle.close()
                self._handle = None

    async def _flush(self) -> None:
        if self._closed:
            return
        if self._held is not None:
            data = b"".join(self._held)
            mode = "replace" if self.replaces else "new"
            # Waited for whatever cancels us: the file is there (and removed by abort) or not, never half.
            st = await run_to_completion(asyncio.to_thread(_write_whole, self._storage.root, self.temp, mode, data))
            self.stamp = stamp_of(st)
            self.needs_sync = self._fsync
            self._closed = True
            self._held = None
            return
        assert self._handle is not None
        await self._handle.flush()
        if self._fsync:
            await asyncio.to_thread(os.fsync, self._handle.fd)
        # rename keeps mtime and inode: the stamp read now is the committed file's.
        self.stamp = stamp_of(await asyncio.to_thread(os.fstat, self._handle.fd))
        await self._close()

    async def flush(self) -> None:
        """Everything written and the file closed: a repo of many files holds no descriptor per file."""
        try:
            await self._flush()
        except OSError as exc:
            raise StorageError(f"{self.path}: write failed: {exc.strerror}") from exc

    async def park(self, path: str, *, complete: bool = True) -> bool:
        return (await self._storage.park_writes([(self, path)]))[0]

    async def commit(self) -> None:
        await self._storage.commit_writes([self])

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        await self._close()
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self.temp_path)
        await self._ledger.release(self._folders, remove_empty=True)


class _VFSParkedWrite(_FolderPaths):
    """A file parked by an earlier import (its temp path), renamed into place on commit."""

    __slots__ = ("_done", "_storage")

    def __init__(self, storage: VFSStorage, path: str, parked: Path, target: Path, size: int) -> None:
        # An import resuming 100,000 parked files holds one of these each until the commit.
        super().__init__(storage, path, target, parked)
        self._storage = storage
        self.bytes_written = size
        self._done = False

    async def write(self, chunk: bytes) -> None:
        raise StorageError(f"{self.path}: a parked file takes no more bytes")

    async def prepare_commit(self) -> str | None:
        # Kept where it was received unless told otherwise (see VFSStorage.adopt_many).
        return self.journal if self.journal is not None else incomplete_path(self.path)

    async def commit(self) -> None:
        await self._storage.commit_writes([self])

    async def park(self, path: str, *, complete: bool = True) -> bool:
        # Still parked where it was: nothing to do.
        return not self._done

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(FileNotFoundError):
            await aiofiles.os.remove(self.temp_path)


async def _lock_folder(folder: Path, wait: float | None, on_wait: Callable[[], None] | None, what: str) -> int:
    """An fd of ``folder`` holding its exclusive flock."""
    deadline = None if wait is None else time.monotonic() + wait
    told = False
    while True:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
        else:
            # The holder may have removed the folder (a failed import cleans up) and another made it anew:
            # a lock on the old one guards nothing.
            try:
                if os.fstat(fd).st_ino == os.stat(folder).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)
            await asyncio.to_thread(_make_parents, folder, folder)
            continue
        if on_wait is not None and not told:
            on_wait()
            told = True
        if deadline is not None and time.monotonic() >= deadline:
            raise StorageError(
                f"{what}: another import into this destination is still running; wait for it to finish, "
                "or raise the wait (--lock-timeout)"
            )
        await asyncio.sleep(0.2)


#: Files listed at most this long are written in one hop at flush (see _VFSPendingWrite).
SMALL_MAX = 256 << 10
#: Folders whose resolution (and ancestor chain) is remembered.
_FOLDER_CACHE = 4096
#: Renames made in one thread hop.
_BATCH = 1000
#: From this many files not yet durable, one syncfs instead of an fsync each.
_SYNCFS_MIN = 32


def _write_whole(root: Path, path: Path, mode: str, data: bytes) -> os.stat_result:
    """Create ``path`` (as :func:`_open_file_within` opens it) holding ``data``; its stat."""
    fd = _open_file_within(root, path, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        return os.fstat(fd)
    finally:
        os.close(fd)


def _rename_batch(
    root: Path, source: str, target: str, items: Sequence[tuple[str, str, bool]]
) -> list[tuple[int, int, str]]:
    """Rename each ``(name, new name, fsync it first)`` from folder ``source`` to folder ``target``, both opened
    once as :func:`_open_folder` opens them; the failures: index, errno (0: not an OSError), what."""
    real_root = Path(os.path.realpath(root))
    source_fd = _open_folder(real_root, Path(source).relative_to(real_root).parts)
    problems: list[tuple[int, int, str]] = []
    try:
        target_fd = (
            source_fd if target == source else _open_folder(real_root, Path(target).relative_to(real_root).parts)
        )
        try:
            for index, (name, new_name, sync) in enumerate(items):
                try:
                    with contextlib.suppress(FileNotFoundError):
                        if stat.S_ISDIR(os.stat(new_name, dir_fd=target_fd, follow_symlinks=False).st_mode):
                            problems.append((index, 0, "a folder of that name exists in the destination"))
                            continue
                    if sync:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=source_fd)
                        try:
                            os.fsync(fd)
                        finally:
                            os.close(fd)
                    os.replace(name, new_name, src_dir_fd=source_fd, dst_dir_fd=target_fd)
                except OSError as exc:
                    problems.append((index, exc.errno or 0, f"commit failed: {exc.strerror}"))
        finally:
            if target_fd != source_fd:
                os.close(target_fd)
    finally:
        os.close(source_fd)
    return problems


def _write_small_batch(root: Path, folder: Path, items: Sequence[tuple[str, bytes, bool]]) -> None:
    """Write each ``(name, body, keep if it says the same)`` in ``folder`` (made if need be, opened as
    :func:`_open_folder` opens it), each under a temp name renamed over the old one: whole or not at all, not
    synced (see :meth:`VFSStorage.publish`)."""
    real_root = Path(os.path.realpath(root))
    parts = folder.relative_to(real_root).parts
    fd = _open_folder(real_root, parts, created=[])
    try:
        for name, body, keep in items:
            if keep:
                try:
                    old_fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
                except OSError:
                    pass
                else:
                    try:
                        old = os.read(old_fd, 4096)
                    finally:
                        os.close(old_fd)
                    if hflocal.says_the_same(old, body):
                        continue
            temp = _temp_name(name, 255)
            flags = _FILE_MODES["new"] | os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
            out = os.open(temp, flags, 0o644, dir_fd=fd)
            try:
                view = memoryview(body)
                while view:
                    view = view[os.write(out, view) :]
            except BaseException:
                os.close(out)
                os.unlink(temp, dir_fd=fd)
                raise
            os.close(out)
            os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
    finally:
        os.close(fd)


def _stat_batch(root: Path, folder: str, names: Sequence[str]) -> list[tuple[int, str] | None]:
    """The size and stamp (:func:`stamp_of`) of each of ``names`` in ``folder`` (opened as :func:`_open_folder`
    opens it), None for one that is missing or not a regular file (a link is not followed). A missing folder:
    none is there. Not the stat itself: a ``stat_result`` is some twenty objects, and the stats of 200,000
    files looked over at once were most of an import's peak memory."""
    real_root = Path(os.path.realpath(root))
    try:
        fd = _open_folder(real_root, Path(folder).relative_to(real_root).parts)
    except FileNotFoundError:
        return [None] * len(names)
    found: list[tuple[int, str] | None] = []
    try:
        for name in names:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                found.append(None)
                continue
            found.append((st.st_size, stamp_of(st)) if stat.S_ISREG(st.st_mode) else None)
    finally:
        os.close(fd)
    return found


def _syncfs(root: Path) -> None:
    """Every dirty byte of ``root``'s filesystem on disk: ``syncfs(2)``, or ``sync(2)`` where there is none."""
    import ctypes

    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None or syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _free_bytes(root: Path) -> int | None:
    """Bytes an unprivileged writer may still use on the filesystem of ``root`` (or of the nearest folder
    above it that exists), or None where the filesystem does not say."""
    for folder in (root, *root.parents):
        try:
            st = os.statvfs(folder)
        except FileNotFoundError:
            continue
        except (OSError, AttributeError):
            return None
        return st.f_bavail * st.f_frsize if st.f_blocks else None
    return None


def _name_max(folder: Path) -> int:
    """The longest file name, in bytes, the filesystem of ``folder`` takes."""
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        return 255


def _temp_name(name: str, limit: int) -> str:
    """A hidden, unique name beside ``name`` that the filesystem accepts even when ``name`` is as long as it
    allows: the name is shortened (on a character boundary) rather than the write failing."""
    suffix = f".{uuid.uuid4().hex[:12]}{PART_SUFFIX}"
    room = limit - 1 - len(suffix.encode())
    encoded = name.encode()
    if len(encoded) > room:
        name = encoded[:room].decode(errors="ignore")
    return f".{name}{suffix}"


def stamp_of(st: os.stat_result) -> str:
    """Size, mtime and inode: what git's index compares to decide a file changed without reading it."""
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def _scan(folder: Path) -> list[tuple[Path, bool, int]]:
    """(path, is a folder, size) of the entries of ``folder``; symlinks are neither followed nor listed."""
    found: list[tuple[Path, bool, int]] = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                found.append((Path(entry.path), True, 0))
            elif entry.is_file(follow_symlinks=False):
                found.append((Path(entry.path), False, entry.stat(follow_symlinks=False).st_size))
    return sorted(found)


def _make_parents(folder: Path, root: Path) -> list[Path]:
    """Create ``folder`` and missing ancestors; return what this call created.

    The root itself may be among them (``--to`` a new directory), so an
    aborted import removes the directory it created. Below the root, each
    folder is created and entered relative to its parent's descriptor,
    never following a symbolic link (see :func:`_open_folder`).
    """
    real_root = Path(os.path.realpath(root))
    created: list[Path] = []
    if not real_root.exists():
        missing: list[Path] = []
        current = real_root
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            created.append(path)
    try:
        parts = folder.relative_to(real_root).parts
    except ValueError:
        return created  # the root or above it
    os.close(_open_folder(real_root, parts, created=created))
    return created


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_folder(root: Path, parts: Sequence[str], *, created: list[Path] | None = None) -> int:
    """A descriptor of ``root/parts...``, each step opened relative to the one before without following a
    symbolic link: a folder swapped for a link (by someone else writing beside the destination) while the
    import runs is refused, never followed out of the destination. With ``created``, missing folders are
    made (and listed there)."""
    fd = os.open(root, _DIR_FLAGS)
    path = root
    try:
        for part in parts:
            path = path / part
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if created is None:
                    raise
                try:
                    os.mkdir(part, dir_fd=fd)
                    created.append(path)
                except FileExistsError:
                    pass
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except OSError as exc:
        os.close(fd)
        # A folder that is a link or a file now, or (while creating) one that vanished right after it was made:
        # someone else is changing the destination's tree.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) or (created is not None and exc.errno == errno.ENOENT):
            rel = path.relative_to(root).as_posix()
            raise UnsafePathError([(rel, "is a symbolic link or a file, not a folder of the destination")]) from None
        raise
    return fd


def _within(root: Path, path: Path) -> tuple[int, str]:
    """The descriptor of ``path``'s folder (opened as :func:`_open_folder` does) and its name there."""
    real_root = Path(os.path.realpath(root))
    parts = path.relative_to(real_root).parts
    return _open_folder(real_root, parts[:-1]), parts[-1]


_FILE_MODES = {"new": os.O_CREAT | os.O_EXCL, "replace": os.O_CREAT | os.O_TRUNC, "append": os.O_APPEND}


def _open_file_within(root: Path, path: Path, mode: str) -> int:
    """A file for writing, opened relative to its folder's descriptor and never through a symbolic link:
    ``new`` (must not exist), ``replace`` (truncated) or ``append`` (must exist)."""
    folder, name = _within(root, path)
    flags = os.O_WRONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | _FILE_MODES[mode]
    try:
        return os.open(name, flags, 0o644, dir_fd=folder)
    finally:
        os.close(folder)


def _replace_within(root: Path, src: Path, dst: Path) -> None:
    """``os.replace(src, dst)`` relative to descriptors of both folders: no path lookup at the moment of the
    rename can be redirected by a link planted in the destination since the paths were checked."""
    src_folder, src_name = _within(root, src)
    try:
        dst_folder, dst_name = _within(root, dst)
        try:
            os.replace(src_name, dst_name, src_dir_fd=src_folder, dst_dir_fd=dst_folder)
        finally:
            os.close(dst_folder)
    finally:
        os.close(src_folder)


def _remove_empty_dirs(folders: list[Path]) -> list[Path]:
    """Remove ``folders`` (deepest first) while they are empty; return those removed."""
    removed: list[Path] = []
    for path in folders:
        try:
            path.rmdir()
        except OSError:
            # Not empty: a committed file, or one this storage did not write, lives there.
            break
        removed.append(path)
    return removed
