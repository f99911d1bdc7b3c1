"""The Hugging Face cache as a destination: blobs by digest, a snapshot per commit, refs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import aiofiles
import aiofiles.os

from ...errors import ConfigError, StorageError, StorageFileNotFoundError, UnsafePathError
from ...model import REPO_TYPES, ArtifactFile, FileResult, ResolvedArtifact
from ...paths import RESERVED_DIR, is_reserved
from ...streams import DEFAULT_CHUNK_SIZE, closing, one_chunk
from ..base import AbstractStorage, FileInfo, PendingWrite
from ..vfs import VFSStorage, stamp_of
from . import snapshot
from .layout import (
    blob_path,
    check_commit,
    check_repo_id,
    check_revision,
    default_cache_dir,
    is_blob_id,
    repo_folder,
    snapshot_path,
)

log = logging.getLogger(__name__)

#: Which snapshot the last import published (for ``verify``, which knows the repository but not the commit).
PUBLISHED_PATH = f"{RESERVED_DIR}/hf-cache.json"
#: How :meth:`HFCacheStorage.find_content` names a blob: inside the reserved folder, so never an artifact's path.
_BLOB_ALIAS = f"{RESERVED_DIR}/blob/"
_REF_TEMP = f"{RESERVED_DIR}/ref"


class HFCacheStorage(AbstractStorage):
    """The cache ``huggingface_hub`` reads (``HF_HUB_CACHE``, ``HF_HOME``), or the one at ``cache_dir``.

    An import writes, under ``models--ORG--NAME/`` (``datasets--``, ``spaces--``),
    each file's bytes to ``blobs/<id>`` (the sha256 of an LFS file, the git blob
    sha1 of another, as the Hub names them; the sha256 for files of another
    source), then ``snapshots/<commit>/`` as relative links to them in one rename
    (see :mod:`.snapshot`), then ``refs/<revision>``. Until that rename nothing of
    the import is visible to ``huggingface_hub``: blobs no snapshot links to are
    only bytes. A blob already in the cache (another revision's, or one
    ``huggingface_hub`` downloaded) is verified where it is rather than fetched.
    What artifact-import keeps (manifest, bytes in flight, parked files) is in
    ``models--ORG--NAME/.artifact-import/``, which ``huggingface_hub``'s cache
    scan does not read; one import per repository folder at a time.

    The repository comes from the source (``hf://ORG/NAME``); a source that is
    not the Hub (``s3://``) must be told which repository (``repo_id``,
    ``repo_type``) and ``commit`` it is, and the ``revision`` whose ref points
    there (none: no ref is written, the snapshot is found by its commit).
    """

    journals_writes = True

    def __init__(
        self,
        name: str = "hf-cache",
        cache_dir: str | os.PathLike[str] | None = None,
        *,
        repo_id: str | None = None,
        repo_type: str = "model",
        commit: str | None = None,
        revision: str | None = None,
        read_only: bool = False,
        fsync: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__(name, read_only=read_only)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if repo_type not in REPO_TYPES:
            raise ConfigError(f"unknown repository type {repo_type!r} (known: {', '.join(REPO_TYPES)})")
        self.repo_id = check_repo_id(repo_id) if repo_id else None
        self.repo_type = repo_type
        self.commit = check_commit(commit) if commit else None
        self.revision = check_revision(revision) if revision else None
        self.fsync = fsync
        self.chunk_size = chunk_size
        #: The import this view is bound to (see :meth:`bind`), and the blob id the source lists for each path.
        self._artifact: ResolvedArtifact | None = None
        self._ids: dict[str, str] = {}
        self._fs = (
            VFSStorage(name, self.root, read_only=read_only, fsync=fsync, chunk_size=chunk_size, hf_metadata=False)
            if self.repo_id is not None
            else None
        )

    @property
    def root(self) -> Path:
        """The repository's folder, ``models--ORG--NAME``; the cache itself until a repository is known."""
        if self.repo_id is None:
            return self.cache_dir
        return self.cache_dir / repo_folder(self.repo_id, self.repo_type)

    def describe(self) -> str:
        return f"{self.name} ({self.root})"

    def _files(self) -> VFSStorage:
        if self._fs is None:
            raise ConfigError(
                f"{self.describe()}: which repository of the cache? Import from hf://ORG/NAME, or name it (repo_id; "
                "--hf-repo for an import from another source, --repo for verify)"
            )
        return self._fs

    # -- what is imported where ------------------------------------------------------------------------------------

    def bind(self, artifact: ResolvedArtifact) -> HFCacheStorage:
        """The view of this cache for ``artifact``: its repository's folder, the snapshot of its commit."""
        hub = artifact.source.startswith("hf://")
        if hub:
            if self.repo_id is not None and (self.repo_id, self.repo_type) != (artifact.repo_id, artifact.repo_type):
                raise ConfigError(
                    f"{artifact.source} is imported into the cache's folder of its own repository: do not name "
                    f"another ({self.repo_type} {self.repo_id})"
                )
            if self.commit is not None and self.commit != artifact.commit:
                raise ConfigError(
                    f"{artifact.source}: the revision resolved to commit {artifact.commit}, not {self.commit}; "
                    "import that commit (hf://ORG/NAME@COMMIT) instead"
                )
            repo_id, repo_type, commit = artifact.repo_id, artifact.repo_type, artifact.commit
            revision: str | None = self.revision or artifact.revision
        else:
            if self.repo_id is None or self.commit is None:
                raise ConfigError(
                    f"{artifact.source} is not a Hub repository: to import it into the Hugging Face cache, say which "
                    "repository and commit it is (--hf-repo ORG/NAME --hf-commit COMMIT, and --hf-revision for the "
                    "branch that points there)"
                )
            repo_id, repo_type, commit, revision = self.repo_id, self.repo_type, self.commit, self.revision
        view = HFCacheStorage(
            self.name,
            self.cache_dir,
            repo_id=repo_id,
            repo_type=repo_type,
            commit=check_commit(commit),
            revision=revision if revision and revision != commit else None,
            read_only=self.read_only,
            fsync=self.fsync,
            chunk_size=self.chunk_size,
        )
        view._artifact = artifact
        if hub:
            # The names huggingface_hub gives the blobs (the ETag of each file): a later download of another
            # revision then finds them. A listing that names a blob otherwise is not trusted with a path.
            for file in artifact.files:
                blob = file.sha256.lower() if file.sha256 else file.git_sha1.lower() if file.git_sha1 else None
                if is_blob_id(blob):
                    view._ids[file.path] = str(blob)
        return view

    def blob_for(self, path: str, sha256: str | None) -> str:
        """The blob ``path`` is stored as: the id the source lists, else the sha256 of its bytes."""
        blob = self._ids.get(path) or (sha256.lower() if sha256 else None)
        if not is_blob_id(blob):
            raise StorageError(f"{path}: no digest to name its blob by", path=path)
        return str(blob)

    async def _snapshot_commit(self) -> str | None:
        """The commit of the snapshot this view reads: the import's, or the one the last import published."""
        if self.commit is not None:
            return self.commit
        body = b""
        try:
            chunks = self._files().stream_download(PUBLISHED_PATH)
            async with closing(chunks):
                async for chunk in chunks:
                    body += chunk
                    if len(body) > 65536:
                        return None  # not what publish writes: not trusted, nor read on
            published = json.loads(body)
        except (StorageError, ValueError):
            return None
        commit = published.get("commit") if isinstance(published, dict) else None
        try:
            return check_commit(commit) if isinstance(commit, str) else None
        except ConfigError:
            return None

    def _inside(self, rel: str) -> Path | None:
        """The file ``rel`` (a path in the repository's folder, links followed) leads to; None if it leads to
        nothing. A link out of the cache (planted, or a moved cache's absolute link) is refused."""
        cache = os.path.realpath(self.cache_dir)
        target = os.path.realpath(os.path.join(self.root, rel))
        if os.path.commonpath([cache, target]) != cache:
            raise UnsafePathError([(rel, "leads out of the Hugging Face cache")])
        return Path(target) if os.path.isfile(target) else None

    async def _locate(self, filepath: str) -> Path:
        """Where the bytes of ``filepath`` are: its link in the snapshot, else the blob the source names."""
        if filepath.startswith(_BLOB_ALIAS):
            candidates = [blob_path(filepath[len(_BLOB_ALIAS) :])]
        else:
            commit = await self._snapshot_commit()
            candidates = [snapshot_path(commit, filepath)] if commit is not None else []
            if filepath in self._ids:
                candidates.append(blob_path(self._ids[filepath]))
        for rel in candidates:
            found = await asyncio.to_thread(self._inside, rel)
            if found is not None:
                return found
        raise StorageFileNotFoundError(f"{filepath}: not found in {self.describe()}")

    async def find_content(self, file: ArtifactFile) -> str | None:
        blob = self._ids.get(file.path)
        if blob is None:
            return None
        try:
            found = await asyncio.to_thread(self._inside, blob_path(blob))
        except UnsafePathError:
            return None
        if found is None or (await aiofiles.os.stat(found)).st_size != file.size:
            return None
        return f"{_BLOB_ALIAS}{blob}"

    # -- AbstractStorage -------------------------------------------------------------------------------------------

    def subpath(self, path: str) -> AbstractStorage:
        raise ConfigError(f"{self.describe()}: the Hugging Face cache has no folders to import into")

    async def open_write(
        self, filepath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        self.check_writable()
        inner = await self._files().open_write(filepath, size_hint=size_hint, sha256=sha256)
        return inner if is_reserved(filepath) else _BlobWrite(self, filepath, inner)

    async def adopt(self, parked: str, filepath: str, *, incomplete: bool = False) -> PendingWrite | None:
        self.check_writable()
        if parked.startswith(_BLOB_ALIAS):
            try:
                found = await self._locate(parked)
            except StorageFileNotFoundError:
                return None
            st = await aiofiles.os.stat(found)
            return _LinkedBlob(filepath, st.st_size, stamp_of(st))
        inner = await self._files().adopt(parked, filepath, incomplete=incomplete)
        return _BlobWrite(self, filepath, inner) if inner is not None else None

    async def stream_download(self, filepath: str) -> AsyncIterator[bytes]:
        if is_reserved(filepath) and not filepath.startswith(_BLOB_ALIAS):
            async for chunk in self._files().stream_download(filepath):
                yield chunk
            return
        path = await self._locate(filepath)
        async with aiofiles.open(path, "rb") as handle:
            while chunk := await handle.read(self.chunk_size):
                yield chunk

    async def get_file_info(self, filepath: str) -> FileInfo:
        if is_reserved(filepath) and not filepath.startswith(_BLOB_ALIAS):
            return await self._files().get_file_info(filepath)
        st = await aiofiles.os.stat(await self._locate(filepath))
        return FileInfo(filepath, st.st_size, stamp=stamp_of(st))

    async def list_files(self) -> AsyncIterator[FileInfo]:
        """The files of the snapshot (of the import, or the last one published), links followed."""
        commit = await self._snapshot_commit()
        if commit is None:
            return
        folder = self.root / snapshot_path(commit)
        for rel in await asyncio.to_thread(_walk, folder):
            with contextlib.suppress(FileNotFoundError, UnsafePathError):
                found = await asyncio.to_thread(self._inside, snapshot_path(commit, rel))
                if found is not None:
                    yield FileInfo(rel, (await aiofiles.os.stat(found)).st_size)

    async def delete_file(self, filepath: str) -> None:
        if not is_reserved(filepath):
            raise StorageError(f"{filepath}: files of the Hugging Face cache are removed with `hf cache rm`")
        await self._files().delete_file(filepath)

    async def delete_folder(self, path: str) -> None:
        await self._files().delete_folder(path)

    async def move(self, src: str, dst: str) -> bool:
        if not (is_reserved(src) and is_reserved(dst)):
            raise StorageError(f"{self.describe()}: cannot move {src} to {dst}")
        return await self._files().move(src, dst)

    async def remove_leftovers(self) -> list[str]:
        removed = await self._files().remove_leftovers()
        return removed + await asyncio.to_thread(snapshot.remove_staging, self.root)

    def reserve(self, nbytes: int) -> contextlib.AbstractAsyncContextManager[object]:
        return self._files().reserve(nbytes)

    @contextlib.asynccontextmanager
    async def exclusive(
        self, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> AsyncIterator[object]:
        """The repository folder's lock (see :meth:`VFSStorage.exclusive`). Its ``snapshots/`` is made with it:
        ``hf cache ls`` calls a repository folder without one damaged, and an interrupted first import leaves
        its parked files there; an import that leaves nothing at all removes both again."""
        async with self._files().exclusive(wait=wait, on_wait=on_wait) as held:
            snapshots = self.root / "snapshots"
            made = not self.read_only and not await aiofiles.os.path.isdir(snapshots)
            if made:
                await aiofiles.os.makedirs(snapshots, exist_ok=True)
            try:
                yield held
            finally:
                if made:
                    with contextlib.suppress(OSError):
                        if await aiofiles.os.listdir(self.root) == ["snapshots"]:
                            await aiofiles.os.rmdir(snapshots)  # only if empty: nothing was published

    async def publish(self, artifact: ResolvedArtifact, files: Sequence[FileResult]) -> None:
        """The snapshot of the import's commit, linking every file of the import (see :mod:`.snapshot`), then
        the ref of its revision."""
        if self.commit is None:
            raise StorageError(f"{self.describe()}: not bound to an import")
        links = {f.path: self.blob_for(f.path, f.sha256) for f in files}
        changed = await asyncio.to_thread(snapshot.publish, self.root, self.commit, links)
        if self.revision is not None:
            await self._write_ref(self.revision, self.commit)
        record: dict[str, Any] = {
            "repo_id": self.repo_id,
            "repo_type": self.repo_type,
            "commit": self.commit,
            "revision": self.revision,
        }
        await self._files().stream_upload(PUBLISHED_PATH, one_chunk(json.dumps(record, indent=2).encode()))
        if changed:
            log.info("%s: snapshot %s published with %d file(s)", self.describe(), self.commit, len(links))

    async def _write_ref(self, revision: str, commit: str) -> None:
        """``refs/<revision>`` → ``commit``, renamed into place whole (readers never see it half written); its
        temporary file lives in the reserved folder, where the cache scan, which reads every file under
        ``refs/``, does not look."""
        path = f"refs/{revision}"
        ref = self.root / path
        with contextlib.suppress(OSError):
            if await asyncio.to_thread(ref.read_text) == commit:
                return
        files = self._files()
        await files.stream_upload(_REF_TEMP, one_chunk(commit.encode()))
        await files.move(_REF_TEMP, path)


def _walk(folder: Path) -> list[str]:
    """Paths (relative to ``folder``) of every entry below it that is not a folder; folder links not followed."""
    found: list[str] = []
    pending = [folder]
    while pending:
        current = pending.pop()
        try:
            with os.scandir(current) as entries:
                listed = list(entries)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in listed:
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
            else:
                found.append(Path(entry.path).relative_to(folder).as_posix())
    return sorted(found)


class _BlobWrite(PendingWrite):
    """A file's bytes, received where a directory keeps them (the partial folder, resumable), committed by
    moving them to ``blobs/<id>``; the snapshot links to them at publish."""

    def __init__(self, storage: HFCacheStorage, path: str, inner: PendingWrite) -> None:
        super().__init__(path)
        self._storage = storage
        self._inner = inner
        self.bytes_written = inner.bytes_written
        self.stamp = inner.stamp

    async def write(self, chunk: bytes) -> None:
        await self._inner.write(chunk)
        self.bytes_written = self._inner.bytes_written

    async def flush(self) -> None:
        await self._inner.flush()
        self.stamp = self._inner.stamp

    async def prepare_commit(self) -> str | None:
        # No commit intent: a blob is harmless wherever a crash leaves it, and the snapshot appears in one rename.
        return None

    async def commit(self) -> None:
        blob = self._storage.blob_for(self.path, self.sha256)
        # Where the bytes wait (a directory derives it from the path rather than keeping it).
        where = await self._inner.prepare_commit()
        if where is None:
            raise StorageError(f"{self.path}: its bytes are not where a commit can move them from")
        try:
            await self._inner.flush()
            self.stamp = self._inner.stamp
            # Replaces a blob of that name: the verified bytes are the source's (a blob someone else left may not be).
            await self._storage._files().move(where, blob_path(blob))
        finally:
            # Once moved, this only lets go of the folders the write made; otherwise it removes the bytes.
            await self._inner.abort()

    async def abort(self) -> None:
        await self._inner.abort()

    async def park(self, path: str, *, complete: bool = True) -> bool:
        return await self._inner.park(path, complete=complete)


class _LinkedBlob(PendingWrite):
    """A blob the cache already held, verified where it is: nothing to move, the snapshot links to it."""

    def __init__(self, path: str, size: int, stamp: str) -> None:
        super().__init__(path)
        self.bytes_written = size
        self.stamp = stamp

    async def write(self, chunk: bytes) -> None:
        raise StorageError(f"{self.path}: the blob in the cache takes no more bytes")

    async def commit(self) -> None:
        pass

    async def abort(self) -> None:
        pass  # the blob is the cache's (other snapshots may link to it): never removed by an import
