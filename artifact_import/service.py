"""Imports as background tasks, the way a storage proxy runs them.

:meth:`ImportService.start_import` checks the request, builds the storage
mappings (a vfolder becomes a ``VolumeStorageAdapter`` named
``vfolder_storage_{request_id}``), starts the import in the background and
returns its id at once. The outcome (success with the result, or failure
with the error, and every file's progress either way) is kept and can be
polled (:meth:`get`) or awaited (:meth:`wait`).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ._aio import run_to_completion
from .context import ImportStepContext, StorageTarget
from .errors import ArtifactImportError, ConfigError
from .model import ArtifactStorageImportStep, FileState, ImportResult, ModelTarget, ProgressEvent
from .pipeline import ImportPipeline
from .registries.base import AbstractRegistry
from .storages.base import AbstractStoragePool, StoragePool
from .storages.volume import VolumeStorageAdapter
from .verifiers.base import Verifier
from .volumes.base import VFolderRef, VolumePool

log = logging.getLogger(__name__)

Step = ArtifactStorageImportStep


class TaskState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@attrs.define
class FileProgress:
    path: str
    state: FileState
    step: Step | None
    bytes_done: int
    bytes_total: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "state": self.state.value,
            "step": self.step.value if self.step else None,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "error": self.error,
        }


@attrs.define(eq=False)
class ImportTask:
    """One import started by :meth:`ImportService.start_import`, running or finished."""

    id: str
    source: str
    destination: str
    started: float = attrs.field(factory=time.time)
    state: TaskState = TaskState.RUNNING
    finished: float | None = None
    result: ImportResult | None = None
    error: ArtifactImportError | None = None
    files: dict[str, FileProgress] = attrs.field(factory=dict)
    _task: asyncio.Task[ImportResult] | None = None

    def on_progress(self, event: ProgressEvent) -> None:
        self.files[event.path] = FileProgress(
            event.path, event.state, event.step, event.bytes_done, event.bytes_total, event.error
        )

    @property
    def done(self) -> bool:
        return self.state is not TaskState.RUNNING

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "state": self.state.value,
            "source": self.source,
            "destination": self.destination,
            "started": self.started,
            "finished": self.finished,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
            "result": None if self.result is None else self.result.to_dict(),
            "files": [f.to_dict() for f in sorted(self.files.values(), key=lambda f: f.path)],
        }


class ImportService:
    """Starts imports in the background and keeps their outcome.

    ``staging``: the name of a pool storage that DOWNLOAD and VERIFY use for
    vfolder imports; without it, vfolder imports stream straight into the
    vfolder (verified before anything there becomes visible). The last
    ``keep_finished`` finished tasks are kept for polling.
    """

    def __init__(
        self,
        registries: Mapping[str, AbstractRegistry],
        *,
        storage_pool: AbstractStoragePool | None = None,
        volume_pool: VolumePool | None = None,
        verifiers: Sequence[Verifier] = (),
        staging: str | None = None,
        max_concurrent_files: int = 4,
        keep_finished: int = 1000,
    ) -> None:
        self.registries = dict(registries)
        self.storage_pool = storage_pool or StoragePool()
        self.volume_pool = volume_pool or VolumePool()
        self.staging = staging
        self.pipeline = ImportPipeline(self.registries, verifiers, max_concurrent_files=max_concurrent_files)
        self._tasks: dict[str, ImportTask] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._keep_finished = keep_finished

    def mappings_for_vfolder(
        self, ref: VFolderRef, request_id: str
    ) -> tuple[VolumeStorageAdapter, dict[Step, StorageTarget]]:
        """The adapter for ``ref`` and the step mappings of an import into it."""
        volume = self.volume_pool.get_volume(ref.volume)
        adapter = VolumeStorageAdapter(f"vfolder_storage_{request_id}", volume, ref.vfid, ref.subpath)
        target = StorageTarget(adapter)
        staging = StorageTarget(self.staging) if self.staging is not None else target
        return adapter, {Step.DOWNLOAD: staging, Step.VERIFY: staging, Step.ARCHIVE: target}

    async def start_import(
        self,
        model: ModelTarget,
        registry_name: str,
        *,
        vfolder: VFolderRef | None = None,
        storage_step_mappings: Mapping[Step, StorageTarget | str] | None = None,
        request_id: str | None = None,
    ) -> str:
        """Start importing ``model`` and return the task id at once.

        The destination is ``vfolder``, or the ARCHIVE entry of
        ``storage_step_mappings`` (storage names of the pool). What can be
        checked without I/O (registry, volume, storage names) is checked
        here and raises :class:`ConfigError` / :class:`StorageNotFoundError`.
        """
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._tasks:
            raise ConfigError(f"an import with request id {request_id!r} already exists")
        self.pipeline.registry(registry_name)
        mappings: dict[Step, StorageTarget] = {
            step: t if isinstance(t, StorageTarget) else StorageTarget(t)
            for step, t in (storage_step_mappings or {}).items()
        }
        if vfolder is not None:
            if Step.ARCHIVE in mappings:
                raise ConfigError("give a vfolder or an ARCHIVE storage mapping, not both")
            _, defaults = self.mappings_for_vfolder(vfolder, request_id)
            mappings = {**defaults, **mappings}
        if Step.ARCHIVE not in mappings:
            raise ConfigError("no destination: give a vfolder or an ARCHIVE storage mapping")
        for target in mappings.values():
            target.resolve(self.storage_pool)
        context = ImportStepContext(
            model=model,
            registry_name=registry_name,
            storage_pool=self.storage_pool,
            storage_step_mappings=mappings,
            step_metadata={"request_id": request_id},
        )
        destination = mappings[Step.ARCHIVE].resolve(self.storage_pool).describe()
        task = ImportTask(request_id, model.uri, destination)
        task._task = asyncio.create_task(self._run(task, context), name=f"import:{request_id}")
        # The outcome is kept on the task; nobody has to await it.
        task._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._tasks[request_id] = task
        return request_id

    async def _run(self, task: ImportTask, context: ImportStepContext) -> ImportResult:
        try:
            result = await self.pipeline.run(context, task.on_progress)
        except asyncio.CancelledError:
            self._finish(task, TaskState.CANCELLED, error=ArtifactImportError(f"{task.source}: import cancelled"))
            raise
        except ArtifactImportError as exc:
            self._finish(task, TaskState.FAILED, error=exc)
            raise
        except Exception as exc:
            log.exception("import %s failed unexpectedly", task.id)
            self._finish(task, TaskState.FAILED, error=ArtifactImportError(f"{task.source}: internal error: {exc!r}"))
            raise
        self._finish(task, TaskState.SUCCEEDED, result=result)
        return result

    def _finish(
        self,
        task: ImportTask,
        state: TaskState,
        *,
        result: ImportResult | None = None,
        error: ArtifactImportError | None = None,
    ) -> None:
        task.state, task.result, task.error, task.finished = state, result, error, time.time()
        self._finished.append(task.id)
        while len(self._finished) > self._keep_finished:
            self._tasks.pop(self._finished.popleft(), None)

    def get(self, task_id: str) -> ImportTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise ConfigError(f"no import task {task_id!r} (finished tasks are kept for a while only)") from None

    def tasks(self) -> list[ImportTask]:
        return list(self._tasks.values())

    async def wait(self, task_id: str) -> ImportResult:
        """The result of the import; raises its error if it failed or was cancelled."""
        task = self.get(task_id)
        assert task._task is not None
        try:
            return await asyncio.shield(task._task)
        except asyncio.CancelledError:
            if task.state is TaskState.CANCELLED:
                assert task.error is not None
                raise task.error from None
            raise

    async def cancel(self, task_id: str) -> ImportTask:
        """Cancel the import and wait until it has cleaned up, as a failed one would."""
        task = self.get(task_id)
        assert task._task is not None
        if not task._task.done():
            task._task.cancel()
            await asyncio.gather(task._task, return_exceptions=True)
        return task

    async def aclose(self) -> None:
        """Cancel every running import and wait for their cleanup."""
        running = [t._task for t in self._tasks.values() if t._task is not None and not t._task.done()]
        for t in running:
            t.cancel()
        if running:
            await run_to_completion(asyncio.gather(*running, return_exceptions=True))
