"""Runs DOWNLOAD → VERIFY → ARCHIVE for every file of an artifact.

Consecutive steps mapped to the same storage are fused into one pass over
the bytes: with the default mapping (everything in the destination) each
byte is read from the source once and is hashed while it is written into a
pending write. A step mapped to another storage splits the pass: the bytes
are committed there under a staging name and read back by the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs

from ._aio import run_to_completion
from .context import ImportStepContext
from .errors import (
    ArtifactImportError,
    ConfigError,
    DestinationConflictError,
    IntegrityError,
    SourceError,
    VerificationError,
)
from .journal import Adopted, ImportPlan, Journal
from .model import (
    CHECKSUM,
    DEFAULT_CONCURRENT_FILES,
    NOT_CHECKED,
    ArtifactFile,
    ArtifactStorageImportStep,
    FileResult,
    FileState,
    ImportResult,
    ModelTarget,
    ProgressEvent,
    ResolvedArtifact,
    SignatureVerdict,
    Verdict,
)
from .paths import PARTIAL_DIR, RESERVED_DIR
from .registries.base import AbstractRegistry
from .signing import SignatureSettings
from .steps.archive import ArchiveStep
from .steps.download import DownloadStep
from .steps.verify import VerifyStep
from .storages.base import AbstractStorage, PendingWrite
from .streams import closing, one_chunk, read_ahead
from .verdictpool import VerdictPool
from .verifiers.base import Verifier

if TYPE_CHECKING:
    from .signing.gate import SignatureGate

log = logging.getLogger(__name__)

ProgressCallback = Callable[[ProgressEvent], None]
#: Failures after which the verified files are worth keeping: the import was cut short, not refused.
INTERRUPTIONS = (asyncio.CancelledError, KeyboardInterrupt, SourceError)
#: Reserved for the manifest beyond its per-file entries.
MANIFEST_ALLOWANCE = 4096
Step = ArtifactStorageImportStep


@attrs.frozen
class _Pass:
    """One read of a file's bytes, writing into ``storage``, doing ``steps`` on the way."""

    storage: AbstractStorage
    steps: tuple[Step, ...]


def bind_passes(passes: list[_Pass], artifact: ResolvedArtifact) -> list[_Pass]:
    """The passes writing into the storages bound to ``artifact`` (see :meth:`AbstractStorage.bind`)."""
    bound: dict[int, AbstractStorage] = {}
    for p in passes:
        bound.setdefault(id(p.storage), p.storage.bind(artifact))
    return [_Pass(bound[id(p.storage)], p.steps) for p in passes]


def plan_passes(context: ImportStepContext) -> list[_Pass]:
    passes: list[_Pass] = []
    for step in Step:
        storage = context.storage_for(step)
        if passes and passes[-1].storage is storage:
            passes[-1] = _Pass(storage, (*passes[-1].steps, step))
        else:
            passes.append(_Pass(storage, (step,)))
    return passes


@attrs.define
class _Run:
    context: ImportStepContext
    artifact: ResolvedArtifact
    passes: list[_Pass]
    #: The destination's journal (the last pass writes into the destination).
    journal: Journal
    on_progress: ProgressCallback | None
    #: The files to fetch: those of the artifact the destination does not hold yet.
    todo: tuple[ArtifactFile, ...]
    run_id: str = attrs.field(factory=lambda: uuid.uuid4().hex[:12])
    pending: list[PendingWrite] = attrs.field(factory=list)
    #: Results of the files whose pending writes are verified, by path (what can be parked).
    verified: dict[str, FileResult] = attrs.field(factory=dict)
    #: Files an earlier run parked incomplete, to resume; files this run parked incomplete.
    incomplete_parked: set[str] = attrs.field(factory=set)
    incomplete_kept: list[str] = attrs.field(factory=list)
    #: Bytes kept of each file this run parked incomplete.
    kept_bytes: dict[str, int] = attrs.field(factory=dict)
    #: A file was refused (verification, quota, ...): nothing is kept for a later import.
    refused: bool = False
    staged: list[tuple[AbstractStorage, str]] = attrs.field(factory=list)
    #: Bytes received from the source by this run (not those re-read from a resumed file's start).
    fetched: int = 0
    #: The model's verified signature, every file is held to (None: unsigned, or not checked).
    gate: SignatureGate | None = None
    #: Verdicts said of many files alike ("not a pickle", the hub's "safe", a matching checksum), kept once.
    verdicts: VerdictPool = attrs.field(factory=VerdictPool)

    def emit(
        self, file: ArtifactFile, state: FileState, step: Step | None, done: int, error: str | None = None
    ) -> None:
        if self.on_progress is not None:
            self.on_progress(ProgressEvent(file.path, state, step, done, file.size, error))


class ImportPipeline:
    """Imports artifacts described by an :class:`ImportStepContext`.

    ``max_concurrent_files`` bounds the files in flight; memory is bounded by
    that × (read-ahead depth + 2) × the registry's chunk size, whatever the
    size of the files.
    """

    def __init__(
        self,
        registries: Mapping[str, AbstractRegistry],
        verifiers: Sequence[Verifier] = (),
        *,
        max_concurrent_files: int = DEFAULT_CONCURRENT_FILES,
        read_ahead_depth: int = 4,
        quarantine: AbstractStorage | None = None,
        skip_present: bool = True,
        keep_partial: bool = False,
        lock_wait: float | None = None,
        on_lock_wait: Callable[[], None] | None = None,
        replace_existing: bool = True,
        signature: SignatureSettings | None = None,
    ) -> None:
        """``quarantine``: where a file a malware scanner flagged is kept for analysis (never the destination).

        ``skip_present``: files an earlier import left at the destination
        (its manifest and the stored size agree, see :mod:`.journal.present`) are
        not fetched again, nor are files an interrupted import parked.

        ``keep_partial``: when the import is interrupted (cancelled, Ctrl-C,
        the source failing), park the files already verified, so that the
        next import of the same revision finishes the rest (see
        :mod:`.journal.record`); otherwise everything is discarded.

        ``replace_existing``: files at the destination that no earlier import
        wrote (its manifest does not list them) are replaced, and the result
        names them (:attr:`ImportResult.replaced`); if false, such files
        fail the import with :class:`DestinationConflictError` before any
        byte moves. :meth:`run` can say otherwise per import.

        ``signature``: the model's signature to require or check (see
        :mod:`.signing`): verified before any other file is fetched, and
        every file held to its signed sha256 before the commit.
        """
        if max_concurrent_files < 1:
            raise ConfigError("max_concurrent_files must be at least 1")
        self.registries = dict(registries)
        self.verify_step = VerifyStep(verifiers)
        self.archive_step = ArchiveStep()
        self.max_concurrent_files = max_concurrent_files
        self.read_ahead_depth = read_ahead_depth
        self.quarantine = quarantine
        self.skip_present = skip_present
        self.keep_partial = keep_partial
        #: One import per destination: how long to wait for another to finish (None: as long as it takes),
        #: and what to tell the user when waiting starts.
        self.lock_wait = lock_wait
        self.on_lock_wait = on_lock_wait
        self.replace_existing = replace_existing
        self.signature = signature if signature is not None and signature.active else None

    async def before_commit(
        self,
        context: ImportStepContext,
        destination: AbstractStorage,
        pending: Sequence[PendingWrite],
        results: Sequence[FileResult],
    ) -> None:
        """Called once every file is received and verified, before any becomes visible; raising refuses the
        import (nothing of it is kept). A subclass checks more here: the Backend.AI bridge runs the storage
        proxy's verifier plugins on the pending files (:attr:`PendingWrite.local_path`)."""

    def registry(self, name: str) -> AbstractRegistry:
        try:
            return self.registries[name]
        except KeyError:
            known = ", ".join(sorted(self.registries)) or "none"
            raise ConfigError(f"no registry named {name!r} (configured: {known})") from None

    async def run(
        self,
        context: ImportStepContext,
        on_progress: ProgressCallback | None = None,
        *,
        replace_existing: bool | None = None,
    ) -> ImportResult:
        """Import ``context.model``; ``replace_existing`` (None: the pipeline's) as in the constructor."""
        started = time.monotonic()
        replace = self.replace_existing if replace_existing is None else replace_existing
        download = DownloadStep(self.registry(context.registry_name), read_ahead_depth=self.read_ahead_depth)
        passes = plan_passes(context)
        # Refused before anything is listed or downloaded.
        targets = [p.storage for p in passes] + ([self.quarantine] if self.quarantine is not None else [])
        for storage in targets:
            storage.check_writable()
        for storage in targets:
            await storage.preflight()
        model = context.model
        if self.signature is not None:
            self.signature.check()
            # The signature travels with the files it vouches for, whatever the filters say.
            model = attrs.evolve(model, also=(*model.also, self.signature.file))
        artifact = await download.resolve(model)
        passes = bind_passes(passes, artifact)
        gate = await self._signature_gate(model, artifact, download)
        context.step_metadata[Step.DOWNLOAD.value] = {
            "commit": artifact.commit,
            "files": len(artifact.files),
            "bytes": artifact.total_size,
        }
        destination = passes[-1].storage
        async with destination.exclusive(wait=self.lock_wait, on_wait=self.on_lock_wait):
            return await self._run_locked(context, artifact, passes, download, on_progress, started, replace, gate)

    async def plan(self, context: ImportStepContext) -> ImportPlan:
        """What :meth:`run` would do with each file (fetch, skip, resume, verify where it is), with sizes,
        without writing anything anywhere: the source is listed, the destination only read (no lock, no
        journal; see :meth:`Journal.plan`)."""
        download = DownloadStep(self.registry(context.registry_name), read_ahead_depth=self.read_ahead_depth)
        passes = plan_passes(context)
        for p in passes:
            p.storage.check_writable()
        artifact = await download.resolve(context.model)
        passes = bind_passes(passes, artifact)
        destination = passes[-1].storage
        await destination.check_paths([f.path for f in artifact.files])
        return await Journal(destination).plan(
            artifact, self.verify_step.verifiers, skip_present=self.skip_present, resume_bytes=len(passes) == 1
        )

    async def _signature_gate(
        self, model: ModelTarget, artifact: ResolvedArtifact, download: DownloadStep
    ) -> SignatureGate | None:
        """The verified signature, before any other file is fetched (None: not checked, or none and allowed)."""
        if self.signature is None:
            return None
        from .signing.gate import open_gate

        return await open_gate(self.signature, model, artifact.files, lambda f: download.stream(artifact, f))

    def _signature_verdict(self, gate: SignatureGate | None, results: Sequence[FileResult]) -> SignatureVerdict:
        if gate is not None:
            return gate.verdict(results)
        if self.signature is None:
            return NOT_CHECKED
        return SignatureVerdict(status="unsigned", policy=self.signature.effective_policy)

    async def _run_locked(
        self,
        context: ImportStepContext,
        artifact: ResolvedArtifact,
        passes: list[_Pass],
        download: DownloadStep,
        on_progress: ProgressCallback | None,
        started: float,
        replace: bool,
        gate: SignatureGate | None,
    ) -> ImportResult:
        """The import proper, while this process alone writes to the destination."""
        destination = passes[-1].storage
        journal = Journal(destination)
        await journal.finish_interrupted_commit()
        await destination.check_paths([f.path for f in artifact.files])
        # Someone else's files of the same names: replaced and reported, or refused before a byte moves.
        replaced = await journal.unrecorded(artifact)
        if replaced and not replace:
            raise DestinationConflictError(destination.describe(), replaced)
        verifiers = self.verify_step.verifiers
        present = await journal.present(artifact, verifiers) if self.skip_present else {}
        todo = tuple(f for f in artifact.files if f.path not in present)
        adopted = Adopted()
        if self.skip_present:
            adopted = await journal.adopt_parked(artifact, todo, verifiers)
        else:
            await journal.discard_parked()
        had_parked, resumed = adopted.found, adopted.results
        todo = tuple(f for f in todo if f.path not in resumed)
        # Resuming a file's bytes, or verifying a copy the destination holds, needs the single pass (verify
        # while writing into the destination).
        single = len(passes) == 1
        local = await journal.find_local(todo) if self.skip_present and single else {}
        run = _Run(context, artifact, passes, journal, on_progress, todo, gate=gate)
        run.pending.extend(adopted.writes)
        run.verified.update(resumed)
        run.incomplete_parked = set(adopted.incomplete) | set(local) if single else set()
        for file in artifact.files:
            if file.path in present:
                run.emit(file, FileState.SKIPPED, None, file.size or 0)
            elif file.path in resumed:
                run.emit(file, FileState.RESUMED, None, file.size or 0)
        await journal.sweep()
        if todo and destination.journals_writes:
            # Before the first byte (files arrive under their incomplete names, see VFSStorage.open_write).
            await journal.record_start(artifact, list(resumed.values()), [f.path for f in todo])
        async with contextlib.AsyncExitStack() as reservations:
            # Quotas are checked before any byte moves; writes then charge these reservations.
            for storage in dict.fromkeys(p.storage for p in passes):
                await reservations.enter_async_context(storage.reserve(self._space_needed(artifact, todo)))
            try:
                results = [*await self._import_files(run, download), *present.values(), *resumed.values()]
                context.step_metadata[Step.VERIFY.value] = {
                    "verifiers": [v.name for v in self.verify_step.verifiers],
                }
                await self.before_commit(context, destination, run.pending, results)
                # The last gate: every file the commit makes visible, fetched, kept or already there.
                signature = self._signature_verdict(gate, results)
                manifest = await journal.commit(run.pending, artifact, results, signature=signature)
            except BaseException as exc:
                await run_to_completion(self._end_failed(run, exc, had_parked))
                raise
            finally:
                await run_to_completion(self._remove_staged(run))
        if had_parked or todo:
            await run_to_completion(journal.discard_parked())
        context.step_metadata[Step.ARCHIVE.value] = {"storage": destination.describe(), "manifest": manifest}
        for file in todo:
            run.emit(file, FileState.DONE, Step.ARCHIVE, file.size or 0)
        return ImportResult(
            source=artifact.source,
            revision=artifact.revision,
            commit=artifact.commit,
            destination=destination.describe(),
            files=tuple(sorted(results, key=lambda r: r.path)),
            seconds=time.monotonic() - started,
            manifest_path=manifest,
            fetched_bytes=run.fetched,
            replaced=tuple(replaced),
            signature=signature,
        )

    async def _resume_incomplete(self, run: _Run, file: ArtifactFile) -> PendingWrite | None:
        """The write an interrupted import left half-done for ``file``, to go on appending to, if any."""
        if file.path not in run.incomplete_parked:
            return None
        run.incomplete_parked.discard(file.path)
        return await run.journal.resume_incomplete(file)

    async def _keep_incomplete(self, run: _Run, file: ArtifactFile, pending: PendingWrite, exc: BaseException) -> bool:
        """On an interruption, park a half-received file as it is, for the next import to go on from."""
        if not (self.keep_partial and isinstance(exc, INTERRUPTIONS)) or run.refused:
            return False
        if not await run.journal.keep_incomplete(file, pending):
            return False
        run.incomplete_kept.append(file.path)
        run.kept_bytes[file.path] = pending.bytes_written
        return True

    async def _end_failed(self, run: _Run, exc: BaseException, had_parked: bool) -> None:
        """Abort what the import wrote; if it was interrupted, park the verified files for the next import."""
        if run.journal.commit_left:
            # Interrupted inside the commit, once its renames were recorded: the next import (or verify)
            # completes it from the record. Leave every byte where the record says it is.
            for file in run.artifact.files:
                if file.path in run.verified:
                    run.emit(file, FileState.PARKED, None, file.size or 0)
            log.info("interrupted during the commit: the next import of the same revision, or verify, completes it")
            return
        if self.keep_partial and isinstance(exc, INTERRUPTIONS) and not run.refused:
            parked = await run.journal.park(run.artifact, run.pending, run.verified, run.incomplete_kept)
            if parked or run.incomplete_kept:
                for file in run.artifact.files:
                    # bytes_done tells the two apart: all of a verified file, part of one received in part.
                    if file.path in run.verified:
                        run.emit(file, FileState.PARKED, None, file.size or 0)
                    elif file.path in run.incomplete_kept:
                        run.emit(file, FileState.PARKED, None, run.kept_bytes.get(file.path, 0))
                # The PARKED events carry this to the caller (the CLI says it in its own words).
                log.info(
                    "%d verified and %d partly received file(s) kept in %s under %s; "
                    "import the same revision again to finish",
                    parked,
                    len(run.incomplete_kept),
                    run.journal.storage.describe(),
                    PARTIAL_DIR,
                )
            elif run.todo or had_parked:
                await run.journal.discard_parked()  # nothing kept: not even the record written at the start
            return
        await self.archive_step.abort_all(run.pending)
        if had_parked or run.todo:
            await run.journal.discard_parked()

    @staticmethod
    def _space_needed(artifact: ResolvedArtifact, todo: Sequence[ArtifactFile]) -> int:
        """The files to fetch plus room for the manifest (path, digests and verdicts per file)."""
        return sum(f.size or 0 for f in todo) + MANIFEST_ALLOWANCE + sum(len(f.path) + 1024 for f in artifact.files)

    async def _import_files(self, run: _Run, download: DownloadStep) -> list[FileResult]:
        if not run.todo:
            return []
        for file in run.todo:
            run.emit(file, FileState.QUEUED, None, 0)
        # Largest first: the long poles start early and small files fill the gaps.
        files = iter(sorted(run.todo, key=lambda f: f.size or 0, reverse=True))
        results: list[FileResult] = []

        async def worker() -> None:
            for file in files:  # one iterator shared by the workers: each file is taken once
                try:
                    results.append(await self._import_file(run, download, file))
                except Exception as exc:
                    run.emit(file, FileState.FAILED, None, 0, str(exc))
                    raise

        # As many workers as files in flight, not a task per file: a repository of 200,000 files would hold
        # 200,000 tasks (and their frames) for the whole import.
        count = min(self.max_concurrent_files, len(run.todo))
        workers = [asyncio.create_task(worker(), name=f"import-worker-{i}") for i in range(count)]
        try:
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    exc = task.exception()
                    if not isinstance(exc, INTERRUPTIONS):
                        # A refused file ends the import for good: the others must not be parked.
                        run.refused = True
                    raise exc  # type: ignore[misc]
            return results
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _import_file(self, run: _Run, download: DownloadStep, file: ArtifactFile) -> FileResult:
        try:
            return await self._import_file_once(run, download, file)
        except IntegrityError:
            if not run.journal.forget_local(file.path):
                raise
            # A blob someone else wrote (or that rotted): the source's bytes replace it.
            log.warning(
                "%s: the copy %s already holds does not match the source's digest; fetching it",
                file.path,
                run.journal.storage.describe(),
            )
            return await self._import_file_once(run, download, file)

    async def _import_file_once(self, run: _Run, download: DownloadStep, file: ArtifactFile) -> FileResult:
        verdicts: list[Verdict] = []
        source: tuple[AbstractStorage, str] | None = None
        written: PendingWrite | None = None
        for index, p in enumerate(run.passes):
            final = index == len(run.passes) - 1
            chunks: AsyncIterator[bytes]
            resumed = await self._resume_incomplete(run, file) if final else None
            offset = resumed.bytes_written if resumed is not None else 0
            if source is None:
                chunks = download.stream(run.artifact, file, offset) if offset != file.size else _nothing()
            else:
                chunks = read_ahead(source[0].stream_download(source[1]), self.read_ahead_depth)
            if Step.VERIFY in p.steps:
                prefix = run.journal.read_incomplete(file, offset) if offset else None
                chunks = self.verify_step.tap(file, chunks, verdicts, prefix)
            chunks = self._count(run, file, p.steps[0], chunks, offset)
            path = file.path if final else f"{RESERVED_DIR}/staging/{run.run_id}/{file.path}"
            keep = functools.partial(self._keep_incomplete, run, file) if final and len(run.passes) == 1 else None
            try:
                pending = await self.archive_step.write(p.storage, path, chunks, file, pending=resumed, keep=keep)
            except VerificationError:
                if self.quarantine is not None and any(v.verifier == "clamav" and not v.ok for v in verdicts):
                    await self._quarantine(run, download, file, verdicts)
                raise
            if final:
                run.pending.append(pending)
                written = pending
            else:
                run.staged.append((p.storage, path))
                await pending.commit()
                source = (p.storage, path)
        checksum = next(v for v in verdicts if v.verifier == CHECKSUM)
        # The stamp now (the write is flushed): the commit then need not make a second result of each file.
        stamp = written.stamp if written is not None else None
        size, sha256 = int(checksum.data["size"]), str(checksum.data["sha256"])
        result = FileResult(file.path, size, sha256, run.verdicts.verdicts(verdicts, sha256, size), stamp=stamp)
        if run.gate is not None:
            run.gate.check_file(result)  # refused now, not after the other files have arrived
        run.emit(file, FileState.VERIFIED, Step.VERIFY, file.size or 0)
        run.verified[file.path] = result
        return result

    async def _quarantine(self, run: _Run, download: DownloadStep, file: ArtifactFile, verdicts: list[Verdict]) -> None:
        """Keep a flagged file, fetched again from the source, and a report of why, in the quarantine."""
        assert self.quarantine is not None
        where = f"{run.run_id}/{file.path}"
        try:
            await self.quarantine.stream_upload(where, download.stream(run.artifact, file))
            report = {
                "source": run.artifact.source,
                "revision": run.artifact.revision,
                "commit": run.artifact.commit,
                "path": file.path,
                "verdicts": [attrs.asdict(v) for v in verdicts],
            }
            await self.quarantine.stream_upload(
                f"{where}.quarantine.json", one_chunk(json.dumps(report, indent=2).encode())
            )
            log.warning("%s: kept in quarantine %s as %s", file.path, self.quarantine.describe(), where)
        except ArtifactImportError as exc:
            log.error("%s: could not be quarantined: %s", file.path, exc)

    @staticmethod
    async def _count(
        run: _Run, file: ArtifactFile, step: Step, chunks: AsyncIterator[bytes], offset: int = 0
    ) -> AsyncIterator[bytes]:
        done = offset
        run.emit(file, FileState.RUNNING, step, done)
        async with closing(chunks):
            async for chunk in chunks:
                done += len(chunk)
                if step is Step.DOWNLOAD:
                    run.fetched += len(chunk)
                run.emit(file, FileState.RUNNING, step, done)
                yield chunk

    @staticmethod
    async def _remove_staged(run: _Run) -> None:
        for storage, path in run.staged:
            try:
                await storage.delete_file(path)
            except Exception:
                log.exception("%s: could not remove staged copy from %s", path, storage.describe())


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator
