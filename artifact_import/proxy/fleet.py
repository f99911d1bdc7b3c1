"""Import tasks shared by a fleet of storage proxies through Redis/Valkey.

With ``[server] task-store = "redis://HOST:PORT/DB"``, :class:`FleetImportService`
replaces the in-process task table of :class:`~.service.ImportService`:

- A task is durable from the ``202`` on: its request, state, per-file progress,
  results or error are a JSON snapshot at ``PREFIX:task:ID`` (finished tasks
  expire after ``finished-ttl``), so every proxy answers ``GET``, ``DELETE``
  and the event stream of every task, before and after a restart.
- Work is **claimed, not assigned**: unfinished tasks wait in the sorted set
  ``PREFIX:active``; a proxy with a free slot takes one it can reach (its
  registry, volume or storages are configured there) by creating its lease
  ``PREFIX:lease:ID`` (``SET NX PX``). A lease names its proxy and is renewed
  every ``lease / 3`` while the import runs; a proxy that dies stops renewing,
  the key expires, and another proxy that can reach the destination claims the
  task and runs it again: the import resumes from what the destination's
  journal holds (see :mod:`..journal.record`), it does not start over.
  A sorted set and a lease key rather than a stream's consumer group: a proxy
  can look at work it cannot reach and leave it to others without taking it.
- ``DELETE`` on any proxy sets ``PREFIX:cancel:ID``; the owner sees it within
  half a second and cancels as for a local cancel; an unclaimed task is
  cancelled by whoever claims it first.
- Progress and state changes are appended to the stream ``PREFIX:events:ID``,
  which the event route of every proxy reads.
- A proxy shutting down gracefully hands its running imports back (what they
  received is kept for the next owner) instead of cancelling them.
- The fleet keeps going whatever the store holds: a task record that cannot
  be read is set aside at ``PREFIX:unreadable:ID`` and its task failed with an
  error saying so, while every other task is claimed, answered and cancelled
  as before. An import whose lease vanished because the store lost its data
  (Redis restarted without persistence: the marker ``PREFIX:store`` is gone)
  writes its record back and goes on; one whose record alone was removed is
  stopped without bringing any of its keys back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import attrs

from .._aio import run_to_completion
from ..context import StorageTarget
from ..errors import ArtifactImportError, ConfigError, ServiceBusyError, StorageNotFoundError
from ..journal import Journal
from ..model import ArtifactStorageImportStep, ImportResult, ModelTarget
from ..volumes.base import VFolderRef
from .service import FINAL_STATES, ImportService, ImportTask, TaskState

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

Step = ArtifactStorageImportStep

DEFAULT_LEASE = 15.0
DEFAULT_FINISHED_TTL = 7 * 24 * 3600
#: How often the owner looks for a cancel request and writes progress.
_TICK = 0.5
#: Events kept per task (the latest of each file is what a late reader needs).
_EVENTS_KEPT = 2000
#: Files of a model a snapshot lists (the rest are counted: ``files_omitted``).
_FILES_KEPT = 1000
#: How long a DELETE waits for the proxy running the task to have cleaned up.
_CANCEL_WAIT = 120.0

# Renew the lease only while it is still ours: a lease that expired and was taken must not be stolen back.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# Replace an unreadable record by a failed one, keeping it aside, unless someone changed it meanwhile.
_SET_ASIDE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'EX', ARGV[3])
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
# Unfinished tasks nobody runs (no lease): the queue a new task joins. Lease keys are built here rather than
# declared, which a single Redis or Valkey (not a cluster) allows.
_WAITING = """
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if redis.call('EXISTS', ARGV[1] .. id) == 0 then n = n + 1 end
end
return n
"""
_STATES = frozenset(s.value for s in TaskState)
_STEPS = frozenset(s.value for s in ArtifactStorageImportStep)


@attrs.frozen
class RemoteTask:
    """A task as the fleet's store holds it: what ``GET /import/ID`` answers on any proxy."""

    snapshot: Mapping[str, Any]
    service: FleetImportService

    @property
    def id(self) -> str:
        return str(self.snapshot["id"])

    @property
    def state(self) -> TaskState:
        return TaskState(self.snapshot["state"])

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def created(self) -> float:
        return float(self.snapshot["created"])

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state.value, "error": self.snapshot.get("error")}

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.snapshot.items() if k != "request"}

    async def subscribe(self) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """The task's events from its first one, then as they come, until it is finished (any proxy)."""
        async for kind, data in self.service._events(self.id):
            yield kind, data


class FleetImportService(ImportService):
    """:class:`ImportService` whose tasks live in Redis and are run by whichever proxy claims them.

    Call :meth:`start` once the event loop runs (the server does it on startup) and :meth:`aclose`
    on shutdown.
    """

    local_names = False

    def __init__(
        self,
        *args: Any,
        redis_url: str,
        lease: float = DEFAULT_LEASE,
        finished_ttl: float = DEFAULT_FINISHED_TTL,
        prefix: str = "artifact-import",
        poll: float = 0.5,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Interrupted imports keep what they received: the next owner resumes from it. A cancel asked by a
        # user discards it afterwards (see _run_claimed).
        self.pipeline.keep_partial = True
        self.redis_url = redis_url
        self.lease = lease
        self.finished_ttl = finished_ttl
        self.prefix = prefix
        self.poll = poll
        self.proxy_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._redis: Redis | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._running: dict[str, ImportTask] = {}
        #: What a running task's record holds beyond its progress (id, created, request): enough to write the
        #: record back if the store loses it.
        self._claimed: dict[str, dict[str, Any]] = {}
        self._handing_back: set[str] = set()
        #: Running tasks another proxy holds now: stopped here, and nothing of theirs written any more.
        self._lost: set[str] = set()
        #: The store's marker when this proxy started (see _lease_gone).
        self._store_id: str | None = None
        self._closing = False

    # --- keys ------------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            from redis.asyncio import Redis

            self._redis = Redis.from_url(self.redis_url, decode_responses=True)
        return self._redis

    @property
    def store_errors(self) -> tuple[type[BaseException], ...]:
        from redis.exceptions import ConnectionError, TimeoutError

        return (ConnectionError, TimeoutError)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Announce what this proxy can reach and start claiming work."""
        try:
            await self.redis.ping()
        except Exception as exc:
            raise ConfigError(
                f"task store {_display(self.redis_url)}: cannot reach it ({type(exc).__name__})"
            ) from None
        await self._announce()
        self._store_id = await self._store_marker()
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="fleet:claim"),
            asyncio.create_task(self._tick_loop(), name="fleet:tick"),
        ]

    async def aclose(self) -> None:
        """Hand the running imports back to the fleet (kept for the next owner), then stop."""
        self._closing = True
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        running = [t for t in self._running.values() if t._task is not None and not t._task.done()]
        for task in running:
            self._handing_back.add(task.id)
            assert task._task is not None
            task._task.cancel()
        if running:
            await run_to_completion(asyncio.gather(*(t._task for t in running if t._task), return_exceptions=True))
        with contextlib.suppress(Exception):
            await self.redis.delete(self._key("proxy", self.proxy_id))
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def _store_marker(self) -> str:
        """The store's marker, made by the first proxy to start on it: a store that lost its data has none."""
        await self.redis.set(self._key("store"), uuid.uuid4().hex, nx=True)
        return str(await self.redis.get(self._key("store")))

    async def _announce(self) -> None:
        reach = {
            "registries": sorted(self.registries),
            "storages": sorted(_names(self.storage_pool)),
            "volumes": sorted(self.volume_pool.names()),
        }
        await self.redis.set(self._key("proxy", self.proxy_id), json.dumps(reach), px=int(self.lease * 3000))

    async def _fleet_reach(self) -> dict[str, set[str]]:
        """What the live proxies of the fleet can reach, all together."""
        reach: dict[str, set[str]] = {"registries": set(), "storages": set(), "volumes": set()}
        async for key in self.redis.scan_iter(match=self._key("proxy", "*")):
            raw = await self.redis.get(key)
            if raw:
                for kind, names in json.loads(raw).items():
                    reach.setdefault(kind, set()).update(names)
        return reach

    # --- the ImportService interface --------------------------------------------------------

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
        models = [models] if isinstance(models, ModelTarget) else list(models)
        if not models:
            raise ConfigError("no models to import")
        waiting = int(await self.redis.eval(_WAITING, 1, self._key("active"), self._key("lease", "")))
        if waiting >= self.max_queued_imports:
            raise ServiceBusyError(
                f"{waiting} imports are waiting for a proxy of the fleet already (max-queued-imports); try again later"
            )
        mappings: dict[str, str] = {}
        for step, target in (storage_step_mappings or {}).items():
            name = target if isinstance(target, str) else target.value
            if not isinstance(name, str):
                raise ConfigError("a fleet task names its storages (another proxy runs it): give storage names")
            mappings[step.value] = name
        if vfolder is None and Step.ARCHIVE.value not in mappings:
            raise ConfigError("no destination: give a vfolder or an ARCHIVE storage mapping")
        reach = await self._fleet_reach()
        for name in mappings.values():
            if name not in reach["storages"]:
                raise StorageNotFoundError(f"no proxy of the fleet has a storage named {name!r}")
        if vfolder is not None and vfolder.volume not in reach["volumes"]:
            raise StorageNotFoundError(f"no proxy of the fleet has a volume named {vfolder.volume!r}")
        if registry_name not in reach["registries"]:
            raise ConfigError(f"no proxy of the fleet has a registry named {registry_name!r}")
        request_id = request_id or uuid.uuid4().hex
        request = {
            "models": [_model_to_dict(m) for m in models],
            "registry_name": registry_name,
            "vfolder": str(vfolder) if vfolder is not None else None,
            "mappings": mappings,
            "replace_existing": replace_existing,
            "subpaths": list(subpaths) if subpaths is not None else None,
        }
        now = time.time()
        snapshot = {
            "id": request_id,
            "state": TaskState.QUEUED.value,
            "error": None,
            "created": now,
            "started": None,
            "finished": None,
            "owner": None,
            "models": [
                {"source": m.uri, "destination": request["vfolder"] or mappings["archive"], "files": [], "result": None}
                for m in models
            ],
            "request": request,
        }
        if not await self.redis.set(self._key("task", request_id), json.dumps(snapshot), nx=True):
            raise ConfigError(f"an import with request id {request_id!r} already exists")
        await self.redis.zadd(self._key("tasks"), {request_id: now})
        await self._event(request_id, "state", _summary(snapshot))
        await self.redis.zadd(self._key("active"), {request_id: now})
        return request_id

    def get(self, task_id: str) -> ImportTask:
        raise TypeError("a fleet task is read with 'await service.fetch(task_id)'")

    async def fetch(self, task_id: str) -> RemoteTask:
        snapshot = await self._load(task_id)
        if snapshot is None:
            raise ConfigError(f"no import task {task_id!r} (finished tasks are kept for a while only)")
        return RemoteTask(snapshot, self)

    async def _load(self, task_id: str) -> dict[str, Any] | None:
        """The task's record, or None if there is none; one that cannot be read is set aside (the task fails)."""
        raw = await self.redis.get(self._key("task", task_id))
        if raw is None:
            return None
        try:
            snapshot = json.loads(raw)
        except ValueError:
            return await self._set_aside(task_id, raw, "it is not JSON")
        problem = _record_problem(snapshot, task_id)
        if problem is not None:
            return await self._set_aside(task_id, raw, problem)
        return cast(dict[str, Any], snapshot)

    async def _set_aside(self, task_id: str, raw: str | bytes, problem: str) -> dict[str, Any]:
        """Keep an unreadable record at ``PREFIX:unreadable:ID`` and fail its task in its place, so that it
        holds nothing up: claims, GET, DELETE and the listing go on for every other task and answer this one."""
        aside = self._key("unreadable", task_id)
        now = time.time()
        message = (
            f"import {task_id}: its record in the task store cannot be read ({problem}); it was set aside at "
            f"{aside} and the task failed. Start the import again."
        )
        failed = {
            "id": task_id,
            "state": TaskState.FAILED.value,
            "error": {"type": "TaskRecordError", "message": message},
            "created": now,
            "started": None,
            "finished": now,
            "owner": None,
            "models": [],
        }
        ttl = int(self.finished_ttl)
        if await self.redis.eval(_SET_ASIDE, 2, self._key("task", task_id), aside, raw, json.dumps(failed), ttl):
            log.error(
                "import %s: its record in the task store cannot be read (%s); set aside at %s", task_id, problem, aside
            )
            await self.redis.zadd(self._key("tasks"), {task_id: now}, nx=True)
            await self._event(task_id, "state", _summary(failed))
            await self._ended(task_id)
            # Said to the webhooks too: whoever started it learns that it will not run.
            ended = ImportTask(task_id, [], created=now)
            ended.set_state(TaskState.FAILED, ArtifactImportError(message))
            self._announce_end(ended)
            return failed
        return await self._load(task_id) or failed

    async def fetch_all(self) -> list[RemoteTask]:
        await self.redis.zremrangebyscore(self._key("tasks"), 0, time.time() - self.finished_ttl)
        found = []
        ids = cast(list[str], await self.redis.zrange(self._key("tasks"), 0, -1))
        for task_id in ids:
            with contextlib.suppress(ConfigError):
                found.append(await self.fetch(task_id))
        return found

    async def wait(self, task_id: str) -> list[ImportResult]:
        raise TypeError("a fleet task is followed with its events or by polling fetch()")

    async def cancel_task(self, task_id: str) -> RemoteTask:
        """Cancel the task wherever it runs and return it once it has cleaned up."""
        task = await self.fetch(task_id)
        if task.done:
            return task
        await self.redis.set(self._key("cancel", task_id), "1", ex=int(self.finished_ttl))
        # Not claimed yet: claim it to cancel it (no proxy will then start it).
        if await self.redis.set(self._key("lease", task_id), self.proxy_id, nx=True, px=int(self.lease * 1000)):
            if (await self.fetch(task_id)).done:
                await self._release(task_id)
            else:
                await self._finish_remote(task_id, TaskState.CANCELLED, _cancelled(task_id))
            return await self.fetch(task_id)
        deadline = time.monotonic() + _CANCEL_WAIT
        while time.monotonic() < deadline:
            task = await self.fetch(task_id)
            if task.done:
                return task
            await asyncio.sleep(0.1)
        return await self.fetch(task_id)

    # --- claiming and running ---------------------------------------------------------------

    async def _claim_loop(self) -> None:
        while True:
            try:
                await self._announce()
                if len(self._running) < self.max_concurrent_imports and not self._closing:
                    await self._claim_some()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet: claiming work failed; trying again")
            await asyncio.sleep(self.poll)

    async def _claim_some(self) -> None:
        active = cast(list[str], await self.redis.zrange(self._key("active"), 0, -1))
        for task_id in active:
            if len(self._running) >= self.max_concurrent_imports or task_id in self._running:
                continue
            if await self.redis.exists(self._key("lease", task_id)):
                continue
            snapshot = await self._load(task_id)
            if snapshot is None or snapshot["state"] in _FINAL:
                await self.redis.zrem(self._key("active"), task_id)
                continue
            problem = _request_problem(snapshot.get("request"))
            if problem is not None:
                raw = await self.redis.get(self._key("task", task_id))
                if raw is not None:
                    await self._set_aside(task_id, raw, problem)
                continue
            if not self._can_reach(snapshot["request"]):
                continue
            if not await self.redis.set(self._key("lease", task_id), self.proxy_id, nx=True, px=int(self.lease * 1000)):
                continue
            await self._run_claimed(snapshot)

    def _can_reach(self, request: Mapping[str, Any]) -> bool:
        if request["registry_name"] not in self.registries:
            return False
        names = set(_names(self.storage_pool))
        if any(name not in names for name in request["mappings"].values()):
            return False
        return request["vfolder"] is None or VFolderRef.parse(request["vfolder"]).volume in self.volume_pool.names()

    async def _run_claimed(self, snapshot: dict[str, Any]) -> None:
        task_id = snapshot["id"]
        request = snapshot["request"]
        if await self.redis.exists(self._key("cancel", task_id)):
            await self._finish_remote(task_id, TaskState.CANCELLED, _cancelled(task_id))
            return
        try:
            models = [_model_from_dict(m) for m in request["models"]]
            vfolder = VFolderRef.parse(request["vfolder"]) if request["vfolder"] else None
            mappings = {Step(step): StorageTarget(name) for step, name in request["mappings"].items()}
            contexts = self._contexts(
                models, request["registry_name"], vfolder, mappings, task_id, request.get("subpaths")
            )
        except ArtifactImportError as exc:
            await self._finish_remote(task_id, TaskState.FAILED, {"type": type(exc).__name__, "message": exc.message})
            return
        taken_over = snapshot.get("owner") is not None
        task = ImportTask(task_id, [self._model_progress(c) for c in contexts], created=snapshot["created"])
        self._running[task_id] = task
        self._claimed[task_id] = {"id": task_id, "created": snapshot["created"], "request": request}
        task._subscribers.append(_Mirror(self, task))  # type: ignore[arg-type]
        if taken_over:
            log.info("import %s: taken over from %s", task_id, snapshot["owner"])
        replace = bool(request.get("replace_existing", False))
        task._task = asyncio.create_task(self._run_owned(task, contexts, replace), name=f"import:{task_id}")
        task._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _run_owned(self, task: ImportTask, contexts: list[Any], replace: bool) -> list[ImportResult]:
        try:
            return await self._run(task, contexts, replace_existing=replace)
        except asyncio.CancelledError:
            if task.id in self._handing_back:
                return []
            raise
        finally:
            await run_to_completion(self._after(task, contexts))

    async def _after(self, task: ImportTask, contexts: list[Any]) -> None:
        """Publish how the task ended; a user's cancel discards what was kept for a resume."""
        self._running.pop(task.id, None)
        self._claimed.pop(task.id, None)
        try:
            if task.id in self._lost:
                self._lost.discard(task.id)
                self._handing_back.discard(task.id)
                return  # another proxy runs it now: its record is that proxy's to write
            if task.id in self._handing_back:
                self._handing_back.discard(task.id)
                if await self._write(task, state=TaskState.QUEUED.value, owner=None):
                    await self._event(task.id, "state", {"id": task.id, "state": TaskState.QUEUED.value, "error": None})
                await self._release(task.id)
                return
            if task.state is TaskState.CANCELLED:
                for context in contexts:
                    with contextlib.suppress(ArtifactImportError):
                        await Journal(context.storage_for(Step.ARCHIVE)).discard_parked()
            await self._write(task)
            await self._ended(task.id)
        except Exception:
            log.exception("import %s: could not record its end in the task store", task.id)

    def _finish(self, task: ImportTask, state: TaskState, error: ArtifactImportError | None = None) -> None:
        if task.id in self._handing_back:
            return  # not finished: another proxy goes on with it
        task.set_state(state, error)
        self._announce_end(task)

    def _announce_end(self, task: ImportTask) -> None:
        for callback in self.on_finished:
            try:
                callback(task)
            except Exception:
                log.exception("import %s: a completion callback failed", task.id)

    async def _tick_loop(self) -> None:
        """Renew the leases of the imports running here, pass on cancels, write their progress."""
        last_renew = 0.0
        while True:
            await asyncio.sleep(_TICK)
            try:
                renew = time.monotonic() - last_renew >= self.lease / 3
                for task in list(self._running.values()):
                    lease = self._key("lease", task.id)
                    if (
                        renew
                        and task.id not in self._lost
                        and not await self.redis.eval(_RENEW, 1, lease, self.proxy_id, int(self.lease * 1000))
                        and not await self._lease_gone(task)
                    ):
                        continue
                    if await self.redis.exists(self._key("cancel", task.id)) and task._task is not None:
                        task._task.cancel()
                    for subscriber in task._subscribers:
                        if isinstance(subscriber, _Mirror):
                            await subscriber.flush()
                if renew:
                    last_renew = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("fleet: renewing leases failed; trying again")

    async def _lease_gone(self, task: ImportTask) -> bool:
        """The lease of an import running here could not be renewed: go on if nobody else holds it (True), or
        stop it. A store that lost its data (restarted without persistence) gets the task's record back."""
        lease = self._key("lease", task.id)
        holder = await self.redis.get(lease)
        if holder == self.proxy_id:
            return True  # claimed again meanwhile (see _recover_store)
        if holder is not None:
            return await self._lose(task, str(holder))
        if await self.redis.get(self._key("store")) != self._store_id:
            await self._recover_store()
            return True
        record = await self._load(task.id)
        if record is None:
            await self._record_missing(task)
            return False
        if record["state"] in _FINAL or record.get("owner") not in (None, self.proxy_id):
            # Another proxy ran it while this one was held up (and may have finished it): its record stands.
            return await self._lose(task, str(record.get("owner")))
        if not await self.redis.set(lease, self.proxy_id, nx=True, px=int(self.lease * 1000)):
            return await self._lease_gone(task)  # taken this very moment: as above
        log.info("import %s: its lease had expired (this proxy was held up); claimed it again", task.id)
        return True

    async def _lose(self, task: ImportTask, holder: str) -> bool:
        """Another proxy holds the task now (this one stalled past the lease): stop, keep nothing, write nothing."""
        log.warning("import %s: lost its lease to proxy %s; stopping here", task.id, holder)
        self._lost.add(task.id)
        self._handing_back.add(task.id)
        if task._task is not None:
            task._task.cancel()
        return False

    async def _record_missing(self, task: ImportTask) -> None:
        """The record of an import running here is gone: the store lost its data (write it back and go on),
        or it was removed on purpose (stop as for a cancel; none of its keys come back)."""
        if task.done or task.id in self._lost or task.id in self._handing_back:
            return
        if await self.redis.get(self._key("store")) != self._store_id:
            await self._recover_store()
            return
        log.warning("import %s: its record was removed from the task store; cancelling it", task.id)
        if task._task is not None:
            task._task.cancel()

    async def _recover_store(self) -> None:
        """The store lost its data (its marker is gone or new: Redis restarted without persistence): claim
        every import running here again and write its record back, so that it goes on and stays answerable."""
        self._store_id = await self._store_marker()
        for task in list(self._running.values()):
            if task.id in self._lost or task.id in self._handing_back:
                continue
            lease = self._key("lease", task.id)
            if not await self.redis.set(lease, self.proxy_id, nx=True, px=int(self.lease * 1000)):
                continue  # someone holds it already: its next renewal finds out who (see _lease_gone)
            await self._restore(task)
            log.warning(
                "import %s: the task store lost its data (restarted without persistence?); its record was written "
                "back and the import goes on",
                task.id,
            )
        await self._announce()

    async def _restore(self, task: ImportTask) -> None:
        """Write a running task's record back into a store that lost it, with what a GET and a take-over need."""
        base = self._claimed.get(task.id)
        if base is None:
            return
        snapshot = {**base, **_bounded(task.to_dict()), "owner": self.proxy_id}
        await self.redis.set(self._key("task", task.id), json.dumps(snapshot), nx=True)
        await self.redis.zadd(self._key("tasks"), {task.id: float(base["created"])}, nx=True)
        await self.redis.zadd(self._key("active"), {task.id: float(base["created"])}, nx=True)
        await self._event(task.id, "state", task.summary())

    # --- the store ----------------------------------------------------------------------------

    async def _write(self, task: ImportTask, **override: Any) -> bool:
        """Write the task's record as this proxy knows it; False (and nothing written) if the record is gone."""
        if task.id in self._lost:
            return False
        base = self._claimed.get(task.id)
        if base is None:
            return False
        snapshot = {**base, **_bounded(task.to_dict()), "owner": self.proxy_id, **override}
        ttl = int(self.finished_ttl) if snapshot["state"] in _FINAL else None
        # XX: only over the record that is there; a task whose record was removed is not brought back.
        return bool(await self.redis.set(self._key("task", task.id), json.dumps(snapshot), ex=ttl, xx=True))

    async def _finish_remote(self, task_id: str, state: TaskState, error: dict[str, str] | None) -> None:
        """End a task this proxy claimed but does not run (cancelled before it started, or a request that
        cannot be run); a record gone or already final stays as it is."""
        found = await self._load(task_id)
        if found is not None and found["state"] not in _FINAL:
            snapshot = {**found, "state": state.value, "error": error, "finished": time.time()}
            if await self.redis.set(
                self._key("task", task_id), json.dumps(snapshot), ex=int(self.finished_ttl), xx=True
            ):
                await self._event(task_id, "state", _summary(snapshot))
        await self._ended(task_id)

    async def _ended(self, task_id: str) -> None:
        await self.redis.zrem(self._key("active"), task_id)
        await self.redis.expire(self._key("events", task_id), int(self.finished_ttl))
        await self.redis.delete(self._key("cancel", task_id))
        await self._release(task_id)

    async def _release(self, task_id: str) -> None:
        """Give up this proxy's lease on the task (if it still holds it)."""
        await self.redis.eval(_RELEASE, 1, self._key("lease", task_id), self.proxy_id)

    async def _event(self, task_id: str, kind: str, data: Mapping[str, Any]) -> None:
        await self.redis.xadd(
            self._key("events", task_id),
            {"kind": kind, "data": json.dumps(data)},
            maxlen=_EVENTS_KEPT,
            approximate=True,
        )

    async def _events(self, task_id: str) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        key = self._key("events", task_id)
        last = "0"
        while True:
            found = cast(
                list[tuple[str, list[tuple[str, dict[str, str]]]]],
                await self.redis.xread({key: last}, block=1000, count=500),
            )
            for _, entries in found:
                for entry_id, fields in entries:
                    last = entry_id
                    data = json.loads(fields["data"])
                    yield fields["kind"], data
                    if fields["kind"] == "state" and data["state"] in {s.value for s in FINAL_STATES}:
                        return
            if not found and (await self.fetch(task_id)).done:
                return


class _Mirror:
    """Passes a running task's events to the store: state changes at once, file progress every tick."""

    def __init__(self, service: FleetImportService, task: ImportTask) -> None:
        self._service = service
        self._task = task
        self._pending: dict[str, dict[str, Any]] = {}
        self._state_changed = False
        #: Flushes started by state changes (the loop keeps only weak references to tasks).
        self._flushes: set[asyncio.Task[None]] = set()

    def put(self, key: str, data: dict[str, Any]) -> None:
        if key == "state":
            self._state_changed = True
            # A state change goes out now, not at the next tick (RUNNING, and the final one).
            flush = asyncio.get_running_loop().create_task(self.flush())
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        self._pending.pop(key, None)
        self._pending[key] = data

    async def flush(self) -> None:
        if not self._pending and not self._state_changed:
            return
        pending, self._pending = self._pending, {}
        self._state_changed = False
        with contextlib.suppress(Exception):
            if self._task.id not in self._service._handing_back and not await self._service._write(self._task):
                # The record is gone (removed, or lost with the store): no event for it, until it is written back.
                await self._service._record_missing(self._task)
                return
            for key, data in pending.items():
                if key == "state" and self._task.id in self._service._handing_back:
                    continue
                await self._service._event(self._task.id, "state" if key == "state" else "file", data)


def _bounded(task: dict[str, Any]) -> dict[str, Any]:
    """The task with at most :data:`_FILES_KEPT` files per model: those not done first, then a count of the
    rest, so that a repository of 100,000 files does not make every snapshot megabytes."""
    for model in task["models"]:
        files = model["files"]
        if len(files) > _FILES_KEPT:
            files.sort(key=lambda f: f["state"] in ("verified", "done", "skipped", "resumed"))
            model["files_omitted"] = len(files) - _FILES_KEPT
            model["files"] = files[:_FILES_KEPT]
    return task


_FINAL = frozenset(s.value for s in FINAL_STATES)


def _record_problem(snapshot: Any, task_id: str) -> str | None:
    """What keeps a task record from being answered (GET, DELETE, the listing), or None."""
    if not isinstance(snapshot, dict):
        return "it is not a JSON object"
    if snapshot.get("id") != task_id:
        return "its id is not the task's"
    if snapshot.get("state") not in _STATES:
        return "its state is not one of " + ", ".join(sorted(_STATES))
    if not isinstance(snapshot.get("created"), int | float) or isinstance(snapshot.get("created"), bool):
        return "it has no creation time"
    if not isinstance(snapshot.get("models"), list):
        return "it has no list of models"
    return None


def _request_problem(request: Any) -> str | None:
    """What keeps an unfinished task's request from being run, or None."""
    if not isinstance(request, dict):
        return "it has no request"
    if not isinstance(request.get("registry_name"), str):
        return "its request names no registry"
    models = request.get("models")
    if not isinstance(models, list) or not models:
        return "its request has no models"
    for model in models:
        if not isinstance(model, dict) or not all(
            isinstance(model.get(k), str) for k in ("repo_id", "revision", "scheme")
        ):
            return "a model of its request has no repo_id, revision or scheme"
        for key in ("include", "exclude", "files"):
            value = model.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                return f"a model of its request has a malformed {key} list"
    mappings = request.get("mappings")
    if not isinstance(mappings, dict) or not all(k in _STEPS and isinstance(v, str) for k, v in mappings.items()):
        return "its request's storage mappings are malformed"
    vfolder = request.get("vfolder")
    if vfolder is not None:
        if not isinstance(vfolder, str):
            return "its request's vfolder is malformed"
        try:
            VFolderRef.parse(vfolder)
        except ConfigError:
            return "its request's vfolder is malformed"
    if vfolder is None and "archive" not in mappings:
        return "its request has no destination"
    return None


def _cancelled(task_id: str) -> dict[str, str]:
    return {"type": "ArtifactImportError", "message": f"import {task_id} cancelled"}


def _summary(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": snapshot["id"], "state": snapshot["state"], "error": snapshot.get("error")}


def _names(pool: Any) -> list[str]:
    names = getattr(pool, "names", None)
    return list(names()) if callable(names) else []


def _model_to_dict(model: ModelTarget) -> dict[str, Any]:
    return {
        "repo_id": model.repo_id,
        "revision": model.revision,
        "include": list(model.include),
        "exclude": list(model.exclude),
        "scheme": model.scheme,
        "repo_type": model.repo_type,
        "files": list(model.files),
    }


def _model_from_dict(raw: Mapping[str, Any]) -> ModelTarget:
    return ModelTarget(
        raw["repo_id"],
        raw["revision"],
        tuple(raw["include"]),
        tuple(raw["exclude"]),
        scheme=raw["scheme"],
        repo_type=raw.get("repo_type", "model"),
        files=tuple(raw.get("files", ())),
    )


def _display(url: str) -> str:
    """A Redis URL without its password."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
