"""Their storage proxy's route and volumes as the tests and the benchmark drive them.

Real: their ``BaseVolume``, ``StorageMappingResolver``, ``HuggingFaceRegistryAPIHandler`` and service. Stand-ins,
each recording what it is given: the Valkey download tracker, the event producer, the background-task starter
(which runs the task with a real ``ProgressReporter``). Importing this module has no side effects (the test
conftest starts the hubs; the benchmark its own).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ai.backend.common.bgtask.reporter import ProgressReporter
from ai.backend.common.types import QuotaScopeID, QuotaScopeType, VFolderID
from ai.backend.storage.api.v1.registries.huggingface import HuggingFaceRegistryAPIHandler
from ai.backend.storage.config.unified import HuggingfaceConfig
from ai.backend.storage.context_types import ArtifactVerifierContext
from ai.backend.storage.data.storage.types import StorageMappingResolver
from ai.backend.storage.services.artifacts.huggingface import HuggingFaceService, HuggingFaceServiceArgs
from ai.backend.storage.storages.storage_pool import StoragePool
from ai.backend.storage.volumes.abc import AbstractVolume
from ai.backend.storage.volumes.pool import VolumePool
from ai.backend.storage.volumes.vfs import BaseVolume
from aiohttp import web

REGISTRY = "huggingface"
VOLUME = "local"


# -- their volume ------------------------------------------------------------------------------------


async def base_volume(mount: Path, cls: type[BaseVolume] = BaseVolume) -> BaseVolume:
    volume = cls(
        local_config={"storage-proxy": {"scandir-limit": 1000}},
        mount_path=mount,
        etcd=None,  # type: ignore[arg-type]
        event_dispatcher=None,  # type: ignore[arg-type]
        event_producer=None,  # type: ignore[arg-type]
    )
    await volume.init()
    return volume


async def new_vfolder(volume: AbstractVolume, scope: QuotaScopeID | None = None) -> VFolderID:
    """A vfolder made as the proxy makes one (its quota scope first)."""
    if scope is None:
        scope = QuotaScopeID(QuotaScopeType.USER, uuid.uuid4())
        await volume.quota_model.create_quota_scope(scope)
    vfid = VFolderID(scope, uuid.uuid4())
    await volume.create_vfolder(vfid)
    return vfid


def files_of(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def folders_of(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_dir())


# -- the stand-ins ---------------------------------------------------------------------------------------


class RecordingEvents:
    """Stands in for their ``EventProducer``: records every event."""

    def __init__(self) -> None:
        self.anycast: list[Any] = []
        self.broadcast: list[tuple[str, Any]] = []

    async def anycast_event(self, event: Any, source_override: Any = None) -> None:
        self.anycast.append(event)

    async def broadcast_event_with_cache(self, cache_id: str, event: Any) -> None:
        self.broadcast.append((cache_id, event))

    def of(self, name: str) -> list[Any]:
        return [e for e in self.anycast if type(e).__name__ == name]


class RecordingTracker:
    """Stands in for their ``ValkeyArtifactDownloadTrackingClient``: records every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def init_artifact_download(self, model_id: str, revision: str, file_info_list: list[tuple[str, int]]) -> None:
        self.calls.append(("init", {"model_id": model_id, "revision": revision, "files": list(file_info_list)}))

    async def update_file_progress(
        self,
        model_id: str,
        revision: str,
        file_path: str,
        current_bytes: int,
        total_bytes: int,
        success: bool = False,
        error_message: str | None = None,
    ) -> None:
        self.calls.append(
            (
                "update",
                {
                    "model_id": model_id,
                    "revision": revision,
                    "file_path": file_path,
                    "current_bytes": current_bytes,
                    "total_bytes": total_bytes,
                    "success": success,
                    "error_message": error_message,
                },
            )
        )

    def last(self) -> dict[str, dict[str, Any]]:
        """The last update of each file."""
        return {c["file_path"]: c for kind, c in self.calls if kind == "update"}


class RecordingTasks:
    """Stands in for their ``BackgroundTaskManager.start``: runs the task with a real ``ProgressReporter``."""

    def __init__(self, events: RecordingEvents) -> None:
        self.events = events
        self.tasks: dict[uuid.UUID, asyncio.Task[Any]] = {}

    async def start(self, func: Callable[..., Awaitable[Any]], name: str | None = None, **kwargs: Any) -> uuid.UUID:
        task_id = uuid.uuid4()
        reporter = ProgressReporter(self.events, task_id)  # type: ignore[arg-type]
        self.tasks[task_id] = asyncio.create_task(func(reporter, **kwargs))
        return task_id

    async def result(self, task_id: uuid.UUID, within: float = 120) -> Any:
        """The task's outcome; a task still running after ``within`` seconds fails the test (a hang)."""
        return await asyncio.wait_for(asyncio.shield(self.tasks[task_id]), within)


class Proxy:
    """Their Hugging Face route (handler, service, mapping resolver) over one real volume, on loopback."""

    def __init__(
        self,
        volume: AbstractVolume,
        endpoint: str,
        verifiers: ArtifactVerifierContext,
        storages: dict[str, Any] | None = None,
    ) -> None:
        self.volume = volume
        self.events = RecordingEvents()
        self.tracker = RecordingTracker()
        self.tasks = RecordingTasks(self.events)
        self.verifiers = verifiers
        self.service = HuggingFaceService(
            HuggingFaceServiceArgs(
                registry_configs={REGISTRY: HuggingfaceConfig(endpoint=endpoint, token=None)},
                background_task_manager=self.tasks,  # type: ignore[arg-type]
                storage_pool=StoragePool(storages or {}),
                event_producer=self.events,  # type: ignore[arg-type]
                artifact_verifier_ctx=verifiers,
                redis_client=self.tracker,  # type: ignore[arg-type]
            )
        )
        self.handler = HuggingFaceRegistryAPIHandler(
            huggingface_service=self.service,
            storage_mapping_resolver=StorageMappingResolver(VolumePool({VOLUME: volume})),
        )

    def app(self) -> web.Application:
        sub = web.Application()
        sub.router.add_route("POST", "/import", self.handler.import_models)
        root = web.Application()
        root.add_subapp("/v1/registries/huggingface", sub)
        return root


def manager_body(repo: str, vfid: VFolderID, *, prefix: str | None = "/", revision: str = "main") -> dict[str, Any]:
    """The body the 26.9.6 manager sends to import into a vfolder: every step mapped to it."""
    target = {"vfolder_id": str(vfid), "volume_name": VOLUME}
    return {
        "models": [{"model_id": repo, "revision": revision}],
        "registry_name": REGISTRY,
        "storage_step_target_mappings": {"download": target, "verify": target, "archive": target},
        "storage_prefix": prefix,
    }
