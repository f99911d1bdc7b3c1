"""Imports as background tasks, the way a storage proxy runs them.

:meth:`ImportService.start_import` checks the request, builds the storage
mappings (a vfolder becomes a ``VolumeStorageAdapter`` named
``vfolder_storage_{request_id}``), starts one background task for the
request and returns its id at once. At most ``max_concurrent_imports`` run
at a time; the others wait, in state ``queued``. The outcome (each model's
result or the error, and every file's progress either way) is kept and can
be polled (:meth:`get`), awaited (:meth:`wait`), followed as events
(:meth:`ImportTask.subscribe`) or announced to webhooks.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, Protocol

import attrs

from .._aio import run_to_completion
from ..context import ImportStepContext, StorageTarget
from ..errors import ArtifactImportError, ConfigError, ServiceBusyError, UnsafePathError
from ..model import (
    DEFAULT_CONCURRENT_FILES,
    ArtifactStorageImportStep,
    FileState,
    ImportResult,
    ModelTarget,
    ProgressEvent,
)
from ..paths import path_problem
from ..pipeline import ImportPipeline
from ..registries.base import AbstractRegistry
from ..signing import SignatureSettings
from ..storages.base import AbstractStorage, AbstractStoragePool, StoragePool
from ..storages.volume import VolumeStorageAdapter
from ..verifiers.base import Verifier
from ..volumes.base import VFolderRef, VolumePool

log = logging.getLogger(__name__)

Step = ArtifactStorageImportStep


class TaskState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


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
class ModelProgress:
    """One model of a request: where it goes, its files as they move, its result."""

    source: str
    destination: str
    files: dict[str, FileProgress] = attrs.field(factory=dict)
    result: ImportResult | None = None

    def to_dict(self) -> dict[str, Any]:
        verdicts = {f.path: [attrs.asdict(v) for v in f.verdicts] for f in self.result.files} if self.result else {}
        return {
            "source": self.source,
            "destination": self.destination,
            "files": [
                {**f.to_dict(), "verdicts": verdicts.get(f.path, [])}
                for f in sorted(self.files.values(), key=lambda f: f.path)
            ],
            "result": self.result.to_dict() if self.result else None,
        }


@attrs.define(eq=False)
class ImportTask:
    """One request started by :meth:`ImportService.start_import`: queued, running or finished."""

    id: str
    models: list[ModelProgress]
    created: float = attrs.field(factory=time.time)
    state: TaskState = TaskState.QUEUED
    started: float | None = None
    finished: float | None = None
    error: ArtifactImportError | None = None
    _task: asyncio.Task[list[ImportResult]] | None = None
    _subscribers: list[_Subscriber] = attrs.field(factory=list)

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def results(self) -> list[ImportResult]:
        return [m.result for m in self.models if m.result is not None]

    def progress_callback(self, index: int) -> Callable[[ProgressEvent], None]:
        model = self.models[index]

        def on_progress(event: ProgressEvent) -> None:
            progress = FileProgress(
                event.path, event.state, event.step, event.bytes_done, event.bytes_total, event.error
            )
            model.files[event.path] = progress
            for subscriber in self._subscribers:
                subscriber.put(f"file:{index}:{event.path}", {"model": index, **progress.to_dict()})

        return on_progress

    def set_state(self, state: TaskState, error: ArtifactImportError | None = None) -> None:
        self.state = state
        if error is not None:
            self.error = error
        if state is TaskState.RUNNING:
            self.started = time.time()
        if state in FINAL_STATES:
            self.finished = time.time()
        for subscriber in self._subscribers:
            subscriber.put("state", self.summary())

    def summary(self) -> dict[str, Any]:
        """State and error, without the files."""
        return {
            "id": self.id,
            "state": self.state.value,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "models": [m.to_dict() for m in self.models],
        }

    async def subscribe(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """``("state" | "file", data)`` as the task moves, starting with its state; ends when it is finished.

        A slow reader gets the latest state of each file, never an unbounded backlog.
        """
        subscriber = _Subscriber()
        self._subscribers.append(subscriber)
        try:
            yield "state", self.summary()
            while not self.done:
                for key, data in await subscriber.take():
                    yield ("state" if key == "state" else "file"), data
            for key, data in subscriber.drain():
                yield ("state" if key == "state" else "file"), data
        finally:
            self._subscribers.remove(subscriber)


class _Subscriber:
    """Pending events for one reader, keyed so a newer event replaces an older one of the same file."""

    def __init__(self) -> None:
        self._pending: dict[str, dict[str, Any]] = {}
        self._ready = asyncio.Event()

    def put(self, key: str, data: dict[str, Any]) -> None:
        self._pending.pop(key, None)  # re-inserted last: events keep their order
        self._pending[key] = data
        self._ready.set()

    def drain(self) -> list[tuple[str, dict[str, Any]]]:
        items = list(self._pending.items())
        self._pending.clear()
        self._ready.clear()
        return items

    async def take(self) -> list[tuple[str, dict[str, Any]]]:
        await self._ready.wait()
        return self.drain()


class TaskView(Protocol):
    """What the HTTP routes read of a task, wherever it is kept (here, or in a fleet's store)."""

    @property
    def id(self) -> str: ...
    @property
    def state(self) -> TaskState: ...
    @property
    def created(self) -> float: ...
    def summary(self) -> dict[str, Any]: ...
    def to_dict(self) -> dict[str, Any]: ...
    def subscribe(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]: ...


#: Called with a finished task (e.g. to post webhooks); must not block.
FinishedCallback = Callable[[ImportTask], None]


class ImportService:
    """Starts imports in the background and keeps their outcome.

    ``staging``: the name of a pool storage that DOWNLOAD and VERIFY use for
    vfolder imports; without it, vfolder imports stream straight into the
    vfolder (verified before anything there becomes visible). The last
    ``keep_finished`` finished tasks are kept for polling. With
    ``max_queued_imports`` imports waiting for a slot, another one is
    refused (:class:`ServiceBusyError`).
    """

    #: Storage and volume names of a request are this process's (a fleet's are checked against every proxy).
    local_names = True

    def __init__(
        self,
        registries: Mapping[str, AbstractRegistry],
        *,
        storage_pool: AbstractStoragePool | None = None,
        volume_pool: VolumePool | None = None,
        verifiers: Sequence[Verifier] = (),
        staging: str | None = None,
        max_concurrent_imports: int = 2,
        max_concurrent_files: int = DEFAULT_CONCURRENT_FILES,
        max_queued_imports: int = 1000,
        keep_finished: int = 1000,
        on_finished: Sequence[FinishedCallback] = (),
        signature: SignatureSettings | None = None,
    ) -> None:
        if max_concurrent_imports < 1:
            raise ConfigError("max_concurrent_imports must be at least 1")
        self.registries = dict(registries)
        self.storage_pool = storage_pool or StoragePool()
        self.volume_pool = volume_pool or VolumePool()
        self.staging = staging
        self.pipeline = ImportPipeline(
            self.registries, verifiers, max_concurrent_files=max_concurrent_files, signature=signature
        )
        self.on_finished = list(on_finished)
        self.max_concurrent_imports = max_concurrent_imports
        self.max_queued_imports = max_queued_imports
        self._slots = asyncio.Semaphore(max_concurrent_imports)
        self._tasks: dict[str, ImportTask] = {}
        self._finished: collections.deque[str] = collections.deque()
        self._keep_finished = keep_finished

    @property
    def store_errors(self) -> tuple[type[BaseException], ...]:
        """Errors of the store that keeps the tasks when it cannot be reached: answered 503, not 500."""
        return ()

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
        models: ModelTarget | Sequence[ModelTarget],
        registry_name: str,
        *,
        vfolder: VFolderRef | None = None,
        storage_step_mappings: Mapping[Step, StorageTarget | str] | None = None,
        request_id: str | None = None,
        replace_existing: bool = False,
        subpaths: Sequence[str] | None = None,
    ) -> str:
        """Start importing ``models`` (one after the other) and return the task id at once.

        The destination is ``vfolder``, or the ARCHIVE entry of
        ``storage_step_mappings`` (storage names of the pool, or storages).
        Each model lands in its folder of ``subpaths`` (one per model, ""
        for the destination itself); without them, one model lands in the
        destination, several each in a folder named by its repository id.
        What can be checked without I/O (registry, volume and storage
        names) is checked here and raises :class:`ConfigError` /
        :class:`StorageNotFoundError`; a full queue raises
        :class:`ServiceBusyError`. Files at the destination that no earlier
        import wrote fail the import (:class:`DestinationConflictError`)
        unless ``replace_existing``.
        """
        models = [models] if isinstance(models, ModelTarget) else list(models)
        if not models:
            raise ConfigError("no models to import")
        request_id = request_id or uuid.uuid4().hex
        if request_id in self._tasks:
            raise ConfigError(f"an import with request id {request_id!r} already exists")
        queued = sum(1 for t in self._tasks.values() if t.state is TaskState.QUEUED)
        if queued >= self.max_queued_imports:
            raise ServiceBusyError(
                f"{queued} imports are waiting for a slot already (max-queued-imports); try again later"
            )
        contexts = self._contexts(models, registry_name, vfolder, storage_step_mappings, request_id, subpaths)
        task = ImportTask(request_id, [self._model_progress(c) for c in contexts])
        task._task = asyncio.create_task(
            self._run(task, contexts, replace_existing=replace_existing), name=f"import:{request_id}"
        )
        # The outcome is kept on the task; nobody has to await it.
        task._task.add_done_callback(lambda t: t.cancelled() or t.exception())
        self._tasks[request_id] = task
        return request_id

    def _contexts(
        self,
        models: Sequence[ModelTarget],
        registry_name: str,
        vfolder: VFolderRef | None,
        storage_step_mappings: Mapping[Step, StorageTarget | str] | None,
        request_id: str,
        subpaths: Sequence[str] | None = None,
    ) -> list[ImportStepContext]:
        """One context per model, its storages resolved; raises what can be checked without I/O."""
        self.pipeline.registry(registry_name)
        if subpaths is None:
            subpaths = [m.repo_id if len(models) > 1 else "" for m in models]
        if len(subpaths) != len(models):
            raise ConfigError(f"{len(subpaths)} subpaths for {len(models)} models: give one per model")
        for subpath in subpaths:
            if subpath.strip("/") and path_problem(subpath.strip("/")) is not None:
                raise UnsafePathError([(subpath, f"as a destination folder: {path_problem(subpath.strip('/'))}")])
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
        resolved = {step: target.resolve(self.storage_pool) for step, target in mappings.items()}
        contexts = []
        for model, subpath in zip(models, subpaths, strict=True):
            per_model = {
                step: StorageTarget(s.subpath(subpath) if subpath.strip("/") and step is Step.ARCHIVE else s)
                for step, s in resolved.items()
            }
            contexts.append(
                ImportStepContext(
                    model=model,
                    registry_name=registry_name,
                    storage_pool=self.storage_pool,
                    storage_step_mappings=per_model,
                    step_metadata={"request_id": request_id},
                )
            )
        return contexts

    @staticmethod
    def _model_progress(context: ImportStepContext) -> ModelProgress:
        return ModelProgress(context.model.uri, _archive(context).describe())

    async def _run(
        self, task: ImportTask, contexts: list[ImportStepContext], *, replace_existing: bool = False
    ) -> list[ImportResult]:
        try:
            async with self._slots:
                task.set_state(TaskState.RUNNING)
                for index, context in enumerate(contexts):
                    task.models[index].result = await self.pipeline.run(
                        context, task.progress_callback(index), replace_existing=replace_existing
                    )
        except asyncio.CancelledError:
            self._finish(task, TaskState.CANCELLED, ArtifactImportError(f"import {task.id} cancelled"))
            raise
        except ArtifactImportError as exc:
            self._finish(task, TaskState.FAILED, exc)
            raise
        except Exception as exc:
            log.exception("import %s failed unexpectedly", task.id)
            self._finish(task, TaskState.FAILED, ArtifactImportError(f"import {task.id}: internal error: {exc!r}"))
            raise
        self._finish(task, TaskState.SUCCEEDED)
        return task.results

    def _finish(self, task: ImportTask, state: TaskState, error: ArtifactImportError | None = None) -> None:
        task.set_state(state, error)
        self._finished.append(task.id)
        while len(self._finished) > self._keep_finished:
            self._tasks.pop(self._finished.popleft(), None)
        for callback in self.on_finished:
            try:
                callback(task)
            except Exception:
                log.exception("import %s: a completion callback failed", task.id)

    def get(self, task_id: str) -> ImportTask:
        try:
            return self._tasks[task_id]
        except KeyError:
            raise ConfigError(f"no import task {task_id!r} (finished tasks are kept for a while only)") from None

    def tasks(self) -> list[ImportTask]:
        return list(self._tasks.values())

    async def wait(self, task_id: str) -> list[ImportResult]:
        """The results of the import, one per model; raises its error if it failed or was cancelled."""
        task = self.get(task_id)
        assert task._task is not None
        try:
            return await asyncio.shield(task._task)
        except asyncio.CancelledError:
            if task.state is TaskState.CANCELLED:
                assert task.error is not None
                raise task.error from None
            raise

    # The same, awaitable: what the HTTP routes call, so that a service keeping its tasks elsewhere (see
    # .fleet) answers them too.
    async def fetch(self, task_id: str) -> TaskView:
        return self.get(task_id)

    async def fetch_all(self) -> Sequence[TaskView]:
        return self.tasks()

    async def cancel_task(self, task_id: str) -> TaskView:
        return await self.cancel(task_id)

    async def start(self) -> None:
        """Nothing to start in one process (a fleet service starts claiming work here)."""

    async def cancel(self, task_id: str) -> ImportTask:
        """Cancel the import and wait until it has cleaned up, as a failed one would."""
        task = self.get(task_id)
        assert task._task is not None
        if not task._task.done():
            task._task.cancel()
            await asyncio.gather(task._task, return_exceptions=True)
        return task

    async def aclose(self) -> None:
        """Cancel every queued and running import and wait for their cleanup."""
        running = [t._task for t in self._tasks.values() if t._task is not None and not t._task.done()]
        for t in running:
            t.cancel()
        if running:
            await run_to_completion(asyncio.gather(*running, return_exceptions=True))


def _archive(context: ImportStepContext) -> AbstractStorage:
    return context.storage_for(Step.ARCHIVE)
