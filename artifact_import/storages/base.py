"""What every destination implements, and the pool that names them."""

from __future__ import annotations

import abc
import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .._aio import map_bounded, run_to_completion
from ..errors import ArtifactImportError, ReadOnlyStorageError, StorageError, StorageNotFoundError

log = logging.getLogger(__name__)

#: Commits made at once by default: on object storage each is a request (a completion, a copy), worth overlapping.
COMMIT_CONCURRENCY = 8

if TYPE_CHECKING:
    from ..model import ArtifactFile, FileResult, ResolvedArtifact


@attrs.frozen
class FileInfo:
    path: str
    size: int
    #: The content's sha256 when the storage keeps it beside the file (object metadata), else None.
    sha256: str | None = None
    #: What changes whenever the stored file does (see :attr:`FileResult.stamp`), where the storage has it.
    stamp: str | None = None


class PendingWrite(abc.ABC):
    """Bytes on their way into a storage, invisible under their final name.

    Exactly one of :meth:`commit` (the file appears, complete) or
    :meth:`abort` (every trace is removed) ends it. ``abort`` after
    ``commit`` or twice is a no-op, so cleanup paths can call it freely.
    """

    # Slots, so that a storage's own writes can do without a __dict__ (a commit of 200,000 files holds as many).
    __slots__ = ("_local_path", "bytes_written", "journal", "path", "sha256", "stamp")

    def __init__(self, path: str) -> None:
        self.path = path
        self.bytes_written = 0
        #: The stored file's stamp once everything is flushed (see :attr:`FileInfo.stamp`); kept by commit.
        self.stamp: str | None = None
        #: Where the bytes wait, as a path in the storage, when commit is a move (see :mod:`..journal.intent`).
        self.journal: str | None = None
        self._local_path: Path | None = None
        #: The sha256 the verifiers found the bytes to have, told by the journal before :meth:`commit`
        #: (storages that name what they store by its content use it: the Hugging Face cache).
        self.sha256: str | None = None

    @property
    def local_path(self) -> Path | None:
        """The file holding the bytes, where the storage keeps them on a local filesystem: for checks that
        read whole files (a storage proxy's verifier plugins) before anything becomes visible."""
        return self._local_path

    @local_path.setter
    def local_path(self, value: Path | None) -> None:
        self._local_path = value

    @abc.abstractmethod
    async def write(self, chunk: bytes) -> None: ...

    async def flush(self) -> None:  # noqa: B027 - optional hook; most writes hold nothing back
        """Hand the storage every byte written, so that only making the file visible is left for commit.

        Called once the last chunk is written, while the file is still its own
        task: a failure here (an upload part the server refused) fails that
        file, before any file of the import becomes visible.
        """

    async def prepare_commit(self) -> str | None:
        """Where a commit interrupted by a crash can be finished from (:meth:`AbstractStorage.move` of it to
        :attr:`path`), after making sure it is there; None if only this process can commit the write."""
        return self.journal

    @abc.abstractmethod
    async def commit(self) -> None: ...

    @abc.abstractmethod
    async def abort(self) -> None: ...

    async def park(self, path: str, *, complete: bool = True) -> bool:
        """End the write by keeping its bytes under ``path`` for a later import.

        ``complete``: the bytes are the whole, verified file; otherwise only
        its start, which a later import must be able to read back. ``path``
        is inside the reserved folder, never a name the artifact uses. False
        if this storage cannot park that; the caller then aborts.
        """
        return False


class AbstractStorage(abc.ABC):
    """A place files are imported into (or staged in, or read back from)."""

    def __init__(self, name: str, *, read_only: bool = False) -> None:
        self.name = name
        self.read_only = read_only

    def describe(self) -> str:
        """Where this storage is, for messages. Never includes a credential."""
        return self.name

    def check_writable(self) -> None:
        if self.read_only:
            raise ReadOnlyStorageError(f"storage {self.describe()} is read-only; choose another destination")

    async def preflight(self) -> None:  # noqa: B027 - optional hook
        """Fail early (before any download) if this storage cannot take writes."""

    def bind(self, artifact: ResolvedArtifact) -> AbstractStorage:
        """The storage to import ``artifact`` into: this one, or (where the layout depends on what is imported,
        as the Hugging Face cache's folder per repository and snapshot per commit) a view of it for that artifact.

        Called once the source is resolved, before anything is read or written.
        """
        return self

    async def find_content(self, file: ArtifactFile) -> str | None:
        """Where this storage already holds the bytes the source lists for ``file`` under another name (a blob
        of the Hugging Face cache, named by its digest), as a path :meth:`adopt` and :meth:`stream_download`
        take; None if nowhere. The import verifies that copy instead of fetching the file."""
        return None

    async def publish(self, artifact: ResolvedArtifact, files: Sequence[FileResult]) -> None:  # noqa: B027
        """Once every file of an import is committed, before its manifest: what else makes the import usable
        as a whole (the Hugging Face cache's snapshot and ref, the download metadata ``hf download`` keeps
        in a directory). ``files`` are all the files of the import, fetched or already there."""

    async def check_paths(self, paths: Sequence[str]) -> None:  # noqa: B027 - optional hook
        """Refuse (:class:`UnsafePathError`) before any download the paths that would leave this storage.

        Names are checked syntactically for every storage before this; a
        storage overrides it to check what only it can see (symlinks).
        """

    #: Whether a file's bytes land, from the first, where the next import finds them (the partial folder):
    #: then the import records what it is receiving before it starts, so that a killed process is resumed.
    journals_writes: bool = False

    async def move(self, src: str, dst: str) -> bool:
        """Make ``dst`` what ``src`` (a :meth:`PendingWrite.prepare_commit` name) holds; False if ``src`` is
        not there (moved already).

        Only storages whose writes can be committed from such a name need it: it completes a commit a
        killed import had started."""
        raise StorageError(f"{self.describe()}: cannot move files")

    async def move_many(self, moves: Sequence[tuple[str, str]]) -> int:
        """:meth:`move` each ``(src, dst)`` in order; how many were moved (the others were moved already)."""
        moved = 0
        for src, dst in moves:
            moved += await self.move(src, dst)
        return moved

    async def remove_leftovers(self) -> list[str]:
        """Remove what imports that died before cleaning up left (part files); the paths removed."""
        return []

    def exclusive(
        self, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        """Held for a whole import: one import per destination at a time.

        A second import waits (``on_wait`` is told once) up to ``wait``
        seconds (None: as long as it takes), then fails with
        :class:`~artifact_import.errors.StorageError`. A lock whose holder
        died is taken over. Storages that cannot lock do nothing.
        """
        return contextlib.nullcontext()

    def reserve(self, nbytes: int) -> contextlib.AbstractAsyncContextManager[object]:
        """Hold ``nbytes`` of space for the import running in this task, or refuse it now.

        Storages with a quota override it (:class:`QuotaExceededError`);
        writes made inside the context are charged to the reservation.
        """
        return contextlib.nullcontext()

    @abc.abstractmethod
    def subpath(self, path: str) -> AbstractStorage:
        """The same storage rooted one folder down (``storage:NAME/PATH``)."""

    @abc.abstractmethod
    async def open_write(
        self, filepath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        """Start a pending write of ``filepath``; see :class:`PendingWrite`.

        ``size_hint`` and ``sha256`` are what the content is expected to be
        (it is verified before commit); a storage may use them to size parts
        or to record the digest.
        """

    async def stream_upload(self, filepath: str, data_stream: AsyncIterable[bytes]) -> FileInfo:
        """Write ``filepath`` from a chunk stream; it appears only when complete."""
        pending = await self.open_write(filepath)
        try:
            async for chunk in data_stream:
                await pending.write(chunk)
            await pending.commit()
        except BaseException:
            await run_to_completion(pending.abort())
            raise
        return FileInfo(filepath, pending.bytes_written)

    @abc.abstractmethod
    def stream_download(self, filepath: str) -> AsyncIterator[bytes]:
        """The bytes of ``filepath`` as bounded chunks."""

    @abc.abstractmethod
    async def delete_file(self, filepath: str) -> None:
        """Remove ``filepath``; a missing file is not an error."""

    @abc.abstractmethod
    async def get_file_info(self, filepath: str) -> FileInfo:
        """Size of ``filepath``; raises :class:`StorageFileNotFoundError` if absent."""

    async def commit_writes(self, writes: Sequence[PendingWrite]) -> None:
        """Commit every write, several at a time; the first failure is raised once none is still running.

        Storages that commit many files cheaper together (a directory: renames folder by folder) override it.
        """
        import asyncio

        limit = asyncio.Semaphore(COMMIT_CONCURRENCY)

        async def one(write: PendingWrite) -> None:
            async with limit:
                await write.commit()

        outcomes = await asyncio.gather(*(one(w) for w in writes), return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def park_writes(self, parks: Sequence[tuple[PendingWrite, str]]) -> list[bool]:
        """:meth:`PendingWrite.park` each ``(write, path)``; whether each was parked. A write that fails to
        park is not parked (the caller aborts it)."""
        parked: list[bool] = []
        for write, path in parks:
            try:
                parked.append(await write.park(path))
            except ArtifactImportError:
                log.warning("%s: could not be parked", write.path, exc_info=True)
                parked.append(False)
        return parked

    async def keep_in_place(self, writes: Sequence[PendingWrite]) -> list[bool]:
        """End each of ``writes`` kept, durable, where its bytes already wait for the next import (its journal
        location, ``incomplete_path(write.path)``), without moving it; whether each was. A storage whose
        writes wait elsewhere keeps none (they are parked with :meth:`park_writes`)."""
        return [False] * len(writes)

    async def adopt(self, parked: str, filepath: str, *, incomplete: bool = False) -> PendingWrite | None:
        """A pending write of ``filepath`` whose bytes are the file parked at ``parked`` (see
        :meth:`PendingWrite.park`), or ``None`` if there is none or this storage does not park.

        ``incomplete``: the parked bytes are only the start of the file; the
        write goes on appending (its ``bytes_written`` says from where).
        """
        return None

    async def adopt_many(self, parked: Sequence[tuple[str, str]]) -> list[PendingWrite | None]:
        """:meth:`adopt` each ``(parked, filepath)`` whole; a storage that finds many files cheaper together
        (a directory: one look per folder) overrides it."""
        return [await self.adopt(where, path) for where, path in parked]

    async def file_infos(self, paths: Sequence[str]) -> dict[str, FileInfo]:
        """:meth:`get_file_info` of those of ``paths`` that exist, by path (a missing one is left out, as is
        one that cannot be read). Sixteen looks at a time; a directory overrides it with one look per folder."""
        import asyncio

        limit = asyncio.Semaphore(16)

        async def info(path: str) -> FileInfo | None:
            async with limit:
                try:
                    return await self.get_file_info(path)
                except ArtifactImportError:
                    return None

        found = await map_bounded(info, paths)
        return {p: i for p, i in zip(paths, found, strict=True) if i is not None}

    async def delete_folder(self, path: str) -> None:  # noqa: B027 - optional hook
        """Remove the folder ``path`` of the reserved folder with everything in it (parked files)."""

    def list_files(self) -> AsyncIterator[FileInfo]:
        """Every file in the storage (outside the reserved ``.artifact-import/`` folder), with its size."""
        raise StorageError(f"{self.describe()} cannot list its files")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""


class AbstractStoragePool(abc.ABC):
    @abc.abstractmethod
    def get_storage(self, name: str) -> AbstractStorage: ...


class StoragePool(AbstractStoragePool):
    """Storages by name, as a storage proxy configures them."""

    def __init__(self, storages: Mapping[str, AbstractStorage] | None = None) -> None:
        self._storages: dict[str, AbstractStorage] = dict(storages or {})

    def add(self, storage: AbstractStorage) -> None:
        self._storages[storage.name] = storage

    def get_storage(self, name: str) -> AbstractStorage:
        try:
            return self._storages[name]
        except KeyError:
            known = ", ".join(sorted(self._storages)) or "none"
            raise StorageNotFoundError(f"no storage named {name!r} (configured: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._storages)
