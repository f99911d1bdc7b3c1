"""One destination's journal: the only room the pipeline and ``verify`` talk to about a destination's state.

A destination holds, beside the artifact, what artifact-import knows of it
under ``.artifact-import/``: the manifest of the last import (see
:mod:`.manifest`), what an interrupted import parked for the next one (see
:mod:`.record`), and the intent of a commit under way (see :mod:`.intent`).
:class:`Journal` reads and writes all three, decides what an import need not
fetch again (:mod:`.present`), and checks a destination against its manifest
(:mod:`.fsck`). The file formats live in those modules and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import attrs

from .._aio import map_bounded, run_to_completion
from ..errors import ArtifactImportError, ConfigError, StorageError
from ..model import ArtifactFile, FileResult, ResolvedArtifact, SignatureVerdict
from ..paths import incomplete_path
from ..storages.base import AbstractStorage, PendingWrite
from ..storages.hflocal import is_bookkeeping
from ..streams import closing
from ..verifiers.base import Verifier
from . import fsck, intent, present, record
from .manifest import MANIFEST_PATH, ManifestChunks, manifest_files, read_manifest
from .plan import Action, ImportPlan, PlannedFile

log = logging.getLogger(__name__)


class Journal:
    """What artifact-import keeps in ``storage`` about the imports into it.

    The verbs in the order an import uses them: :meth:`finish_interrupted_commit`,
    :meth:`unrecorded`, :meth:`present`, :meth:`adopt_parked` (or :meth:`discard_parked`),
    :meth:`sweep`, :meth:`record_start`; while files arrive,
    :meth:`resume_incomplete`, :meth:`read_incomplete` and
    :meth:`keep_incomplete`; at the end :meth:`commit`, or :meth:`park` when
    the import was cut short. :meth:`check` is ``verify``.
    """

    def __init__(self, storage: AbstractStorage) -> None:
        self.storage = storage
        #: Files whose bytes the destination already holds under another name (see :meth:`find_local`), by path.
        self._local: dict[str, str] = {}
        #: An interruption stopped :meth:`commit` after its renames were recorded: whoever comes next (an import,
        #: ``verify``) completes it; nothing of this import is to be parked or aborted.
        self.commit_left = False

    # -- before the first byte -------------------------------------------------------------------------------------

    async def finish_interrupted_commit(self) -> bool:
        """Complete a commit a killed import left half done; True if there was one."""
        return await intent.finish_interrupted_commit(self.storage)

    async def manifest(self) -> dict[str, Any] | None:
        """The manifest of the last import, or None if there is none or it cannot be used."""
        return await read_manifest(self.storage)

    async def present(self, artifact: ResolvedArtifact, verifiers: Sequence[Verifier]) -> dict[str, FileResult]:
        """The files of ``artifact`` the destination already holds, verified as this run would verify them."""
        return await present.already_present(self.storage, artifact, verifiers, await self.manifest())

    async def unrecorded(self, artifact: ResolvedArtifact) -> list[str]:
        """The paths of ``artifact`` that exist at the destination but that no earlier import wrote (its
        manifest does not list them): what importing ``artifact`` would replace of someone else's."""
        return await present.unrecorded(self.storage, artifact, await self.manifest())

    async def adopt_parked(
        self, artifact: ResolvedArtifact, todo: Sequence[ArtifactFile], verifiers: Sequence[Verifier]
    ) -> record.Adopted:
        """What an earlier, interrupted import of the same commit parked, ready for this one."""
        return await record.adopt_parked(self.storage, artifact, todo, verifiers)

    async def discard_parked(self) -> None:
        """Remove whatever an interrupted import parked (the partial folder and its record)."""
        await record.discard_parked(self.storage)

    async def find_local(self, todo: Sequence[ArtifactFile]) -> dict[str, str]:
        """The files of ``todo`` whose bytes the destination already holds under another name (a blob of the
        Hugging Face cache another revision or ``huggingface_hub`` wrote), by path: they are then verified from
        there like a file received whole by an interrupted import (:meth:`resume_incomplete`), not fetched."""
        self._local = await self._held_elsewhere(todo)
        return dict(self._local)

    async def _held_elsewhere(self, todo: Sequence[ArtifactFile]) -> dict[str, str]:
        limit = asyncio.Semaphore(16)

        async def where(file: ArtifactFile) -> tuple[str, str | None]:
            async with limit:
                try:
                    return file.path, await self.storage.find_content(file)
                except ArtifactImportError:
                    return file.path, None

        found = await map_bounded(where, todo)
        return {path: at for path, at in found if at is not None}

    def forget_local(self, path: str) -> bool:
        """Stop using the copy the destination holds of ``path`` (it did not verify); True if there was one."""
        return self._local.pop(path, None) is not None

    async def sweep(self) -> list[str]:
        """Remove what imports that died before cleaning up left (part files); the paths removed."""
        return await self.storage.remove_leftovers()

    async def record_start(
        self, artifact: ResolvedArtifact, kept: Sequence[FileResult], receiving: Sequence[str]
    ) -> None:
        """Record, before the first byte, the files ``kept`` from an earlier import and those about to be
        received: whatever ends this process, the next import knows what the partial folder holds."""
        await record.write_record(self.storage, artifact, kept, receiving)

    # -- while files arrive ----------------------------------------------------------------------------------------

    async def resume_incomplete(self, file: ArtifactFile) -> PendingWrite | None:
        """The write an interrupted import left half-done for ``file``, to go on appending to, if any.

        A write with nothing to go on from, or more than the file, starts
        over (all of it, received by a process that died before it could
        commit: re-read for the verifiers, nothing fetched).
        """
        where = self._local.get(file.path) or incomplete_path(file.path)
        pending = await self.storage.adopt(where, file.path, incomplete=True)
        if pending is None:
            return None
        if pending.bytes_written == 0 or pending.bytes_written > (file.size or 0):
            await run_to_completion(pending.abort())
            return await self.storage.open_write(file.path, size_hint=file.size, sha256=file.sha256)
        log.info("%s: resuming at byte %d of %s", file.path, pending.bytes_written, file.size)
        return pending

    async def read_incomplete(self, file: ArtifactFile, length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes of the half-done write of ``file``, read back for the verifiers."""
        left = length
        chunks = self.storage.stream_download(self._local.get(file.path) or incomplete_path(file.path))
        async with closing(chunks):
            async for chunk in chunks:
                if len(chunk) >= left:
                    yield chunk[:left]
                    return
                left -= len(chunk)
                yield chunk
        if left:
            raise StorageError(f"{file.path}: the parked start of the file is shorter than recorded")

    async def keep_incomplete(self, file: ArtifactFile, pending: PendingWrite) -> bool:
        """Park a half-received file as it is, for the next import to go on from; False if it cannot be."""
        return pending.bytes_written > 0 and await pending.park(incomplete_path(file.path), complete=False)

    # -- the end ---------------------------------------------------------------------------------------------------

    async def commit(
        self,
        pending: Sequence[PendingWrite],
        artifact: ResolvedArtifact,
        files: Sequence[FileResult],
        *,
        signature: SignatureVerdict | None = None,
    ) -> str:
        """Make every verified file visible, then what the storage's layout needs besides
        (:meth:`AbstractStorage.publish`), then the manifest that vouches for them; its path."""
        # Results made before their write's stamp was known get it now (those the pipeline made carry it).
        if any(f.stamp is None for f in files):
            stamps = {write.path: write.stamp for write in pending if write.stamp is not None}
            files = [f if f.stamp is not None else attrs.evolve(f, stamp=stamps.get(f.path)) for f in files]
        digests = {f.path: f.sha256 for f in files}
        for write in pending:
            write.sha256 = digests.get(write.path, write.sha256)
        recorded = False

        def mark() -> None:
            nonlocal recorded
            recorded = True

        async def publish() -> None:
            await self.storage.publish(artifact, files)

        try:
            await intent.commit(
                self.storage,
                pending,
                ManifestChunks(artifact, files, signature=signature),
                before_manifest=publish,
                on_recorded=mark,
            )
        except (asyncio.CancelledError, KeyboardInterrupt):
            self.commit_left = recorded
            raise
        return MANIFEST_PATH

    async def park(
        self,
        artifact: ResolvedArtifact,
        pending: Sequence[PendingWrite],
        verified: Mapping[str, FileResult],
        incomplete: Sequence[str] = (),
    ) -> int:
        """Park every pending write of a verified file and abort the others, for the next import; record
        them and the ``incomplete`` files already parked. How many complete files were parked."""
        return await record.park_verified(self.storage, artifact, pending, verified, incomplete)

    async def parked_summary(self) -> record.ParkedSummary | None:
        """What an interrupted import left in the partial folder for the next import, as its record says."""
        return await record.parked_summary(self.storage)

    async def plan(
        self,
        artifact: ResolvedArtifact,
        verifiers: Sequence[Verifier],
        *,
        skip_present: bool = True,
        resume_bytes: bool = True,
    ) -> ImportPlan:
        """What an import of ``artifact`` would do with each file, decided as :meth:`present`,
        :meth:`adopt_parked`, :meth:`find_local` and :meth:`resume_incomplete` decide it for the import, but
        without changing anything (nor taking the lock: an import running meanwhile may change the answer).

        ``skip_present``: as the import's (False: every file is fetched). ``resume_bytes``: whether the
        import can go on from the bytes of a file received in part (it cannot when a staging storage splits
        the passes).
        """
        completes = await intent.read_intent(self.storage) is not None
        present_files = await self.present(artifact, verifiers) if skip_present else {}
        todo = [f for f in artifact.files if f.path not in present_files]
        offered = await record.adoptable(self.storage, artifact, todo, verifiers) if skip_present else None
        whole: dict[str, FileResult] = {}
        incomplete: frozenset[str] = frozenset()
        if offered is not None and offered.same_version:
            for path, entry in offered.complete.items():
                with contextlib.suppress(ArtifactImportError):
                    await self.storage.get_file_info(record.parked_path(path))
                    whole[path] = entry
                    continue
                if self.storage.journals_writes:
                    # Kept where it was received (see record.adopt_parked): whole if unchanged since verified.
                    with contextlib.suppress(ArtifactImportError):
                        info = await self.storage.get_file_info(incomplete_path(path))
                        if entry.stamp is not None and info.stamp == entry.stamp and info.size == entry.size:
                            whole[path] = entry
            incomplete = (
                (offered.incomplete | (offered.complete.keys() - whole.keys())) - whole.keys()
                if resume_bytes
                else frozenset()
            )
        todo = [f for f in todo if f.path not in whole]
        local = await self._held_elsewhere(todo) if skip_present and resume_bytes else {}
        planned: list[PlannedFile] = []
        for file in artifact.files:
            size = file.size or 0
            if file.path in present_files:
                planned.append(PlannedFile(file.path, file.size, Action.SKIP, 0, size))
            elif file.path in whole:
                planned.append(PlannedFile(file.path, file.size, Action.RESUME, 0, size))
            elif file.path in local:
                planned.append(PlannedFile(file.path, file.size, Action.VERIFY, 0, size))
            elif file.path in incomplete and (have := await self._received(file)):
                planned.append(PlannedFile(file.path, file.size, Action.RESUME, size - have, have))
            else:
                planned.append(PlannedFile(file.path, file.size, Action.FETCH, size))
        return ImportPlan(
            source=artifact.source,
            revision=artifact.revision,
            commit=artifact.commit,
            destination=self.storage.describe(),
            files=tuple(planned),
            completes_commit=completes,
            replaces=tuple(await self.unrecorded(artifact)),
        )

    async def _received(self, file: ArtifactFile) -> int:
        """Bytes of ``file`` an interrupted import received and :meth:`resume_incomplete` would go on from."""
        try:
            have = (await self.storage.get_file_info(incomplete_path(file.path))).size
        except ArtifactImportError:
            return 0
        return have if 0 < have <= (file.size or 0) else 0

    async def check(self, *, digests: bool = True, concurrency: int = 4) -> fsck.FsckReport:
        """Re-read the destination and compare it with its manifest (``verify``): every listed file present
        and unchanged, and nothing else.

        With ``digests``, every file is read back and its sha256 compared;
        without, sizes only. A destination whose first import was
        interrupted has no manifest yet: the report says what that import
        kept (``committed`` false). A commit a killed import left half done is
        completed first, and part files killed imports left are removed,
        unless an import is running there now.
        """
        storage = self.storage
        removed: list[str] = []
        completed = False
        # Read again under the lock by finish_interrupted_commit: an import may finish it meanwhile.
        if storage.journals_writes or await intent.read_intent(storage) is not None:
            try:
                async with storage.exclusive(wait=0):
                    completed = await self.finish_interrupted_commit()
                    removed = await self.sweep()
            except StorageError:
                pass  # an import holds the destination: it completes the commit itself
        manifest = await self.manifest()
        if manifest is None and (parked := await self.parked_summary()) is not None:
            # A first import that was interrupted: nothing of the artifact yet, but what it kept is worth saying.
            return fsck.FsckReport(
                destination=storage.describe(),
                source=parked.source,
                commit=parked.commit,
                checked=0,
                total_bytes=0,
                digests_checked=digests,
                removed_leftovers=tuple(removed),
                completed_commit=completed,
                parked=parked,
                committed=False,
            )
        if manifest is None:
            raise ConfigError(
                f"{storage.describe()}: no usable {MANIFEST_PATH}: not a destination of artifact-import, "
                "so there is nothing to check it against"
            )
        entries = manifest_files(manifest)
        missing, changed = await fsck.compare(storage, entries, digests=digests, concurrency=concurrency)
        # What `hf download --local-dir` keeps (and we write for it, see storages.hflocal) is not the artifact's.
        extra = tuple(
            sorted([f.path async for f in storage.list_files() if f.path not in entries and not is_bookkeeping(f.path)])
        )
        return fsck.FsckReport(
            destination=storage.describe(),
            source=str(manifest.get("source", "")),
            commit=str(manifest.get("commit", "")),
            checked=len(entries),
            total_bytes=sum(e.size for e in entries.values()),
            missing=missing,
            changed=changed,
            extra=extra,
            digests_checked=digests,
            removed_leftovers=tuple(removed),
            completed_commit=completed,
            parked=await self.parked_summary(),
            signature=SignatureVerdict.from_dict(signed)
            if isinstance(signed := manifest.get("signature"), dict)
            else None,
        )
