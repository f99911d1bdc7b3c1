"""Tests against the real Backend.AI storage proxy (``backend-ai-storage-proxy==26.9.6``, Python 3.13).

Run by ``scripts/test.sh`` in ``.venv-backendai`` (``pytest --confcutdir tests/backendai tests/backendai``);
the main suite does not collect them. Their real ``BaseVolume``, ``StorageMappingResolver``, route handler,
service, pipeline and plugin contexts are used; stand-ins only for the Valkey download tracker, the event
producer and the background-task starter, each recording what it is given.

Two local hubs serve the same repositories (same content, so the same commits): the one the registry config
names (``hub``), and the one huggingface_hub falls back to (``HF_ENDPOINT`` when it is imported,
``default_hub``), which their client uses for the calls that ignore the config (file listing, commit).
"""

from __future__ import annotations

import os
import sys
import tempfile

if sys.version_info < (3, 13):
    raise RuntimeError(
        "tests/backendai need Python 3.13 and backend-ai-storage-proxy 26.9.6: run them with scripts/test.sh "
        "(it builds .venv-backendai)"
    )

from pathlib import Path

from tests.hub import Faults, HubServer, LocalHub

# Before huggingface_hub is imported (their package imports it): it reads these once, then.
_HOME = tempfile.mkdtemp(prefix="bai-hf-home-")
_DEFAULT_HUB = HubServer(LocalHub(Path(tempfile.mkdtemp(prefix="bai-default-hub-"))))
os.environ["HF_ENDPOINT"] = _DEFAULT_HUB.start()
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HOME"] = _HOME
os.environ.pop("HF_TOKEN", None)

import asyncio  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import uuid  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping  # noqa: E402
from typing import Any  # noqa: E402

import pytest  # noqa: E402
from ai.backend.common.bgtask.reporter import ProgressReporter  # noqa: E402
from ai.backend.common.types import QuotaScopeID, QuotaScopeType, VFolderID  # noqa: E402
from ai.backend.storage.api.v1.registries.huggingface import HuggingFaceRegistryAPIHandler  # noqa: E402
from ai.backend.storage.config.unified import HuggingfaceConfig  # noqa: E402
from ai.backend.storage.context_types import ArtifactVerifierContext  # noqa: E402
from ai.backend.storage.data.storage.types import StorageMappingResolver  # noqa: E402
from ai.backend.storage.services.artifacts.huggingface import (  # noqa: E402
    HuggingFaceService,
    HuggingFaceServiceArgs,
)
from ai.backend.storage.storages.storage_pool import StoragePool  # noqa: E402
from ai.backend.storage.volumes.abc import AbstractVolume  # noqa: E402
from ai.backend.storage.volumes.pool import VolumePool  # noqa: E402
from ai.backend.storage.volumes.vfs import BaseVolume  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

REGISTRY = "huggingface"
VOLUME = "local"
_names = itertools.count()


def pytest_unconfigure(config: pytest.Config) -> None:
    _DEFAULT_HUB.stop()
    shutil.rmtree(_DEFAULT_HUB.hub.data_dir, ignore_errors=True)
    shutil.rmtree(_HOME, ignore_errors=True)


def repo_name(prefix: str = "model") -> str:
    return f"bai-org/{prefix}-{next(_names)}"


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    server = HubServer(LocalHub(tmp_path_factory.mktemp("hub-data")))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server: HubServer) -> Iterator[LocalHub]:
    """The hub the registry config names, with fresh faults and request logs."""
    local = hub_server.hub
    local.faults = Faults()
    local.requests.clear()
    local.api_requests.clear()
    yield local
    local.faults = Faults()


@pytest.fixture
def default_hub() -> LocalHub:
    """The hub huggingface_hub was imported with (``HF_ENDPOINT``), with fresh request logs."""
    local = _DEFAULT_HUB.hub
    local.requests.clear()
    local.api_requests.clear()
    return local


@pytest.fixture
def publish(hub: LocalHub, default_hub: LocalHub) -> Callable[[Mapping[str, bytes | int]], tuple[str, str]]:
    """Create a repository on both hubs; ``(repo id, commit)``."""

    def make(files: Mapping[str, bytes | int], prefix: str = "model") -> tuple[str, str]:
        repo = repo_name(prefix)
        commit = hub.create_repo(repo, files)
        assert default_hub.create_repo(repo, files) == commit
        return repo, commit

    return make


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


@pytest.fixture
async def volume(tmp_path: Path) -> AsyncIterator[BaseVolume]:
    found = await base_volume(tmp_path / "vfroot")
    yield found
    await found.shutdown()


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

    def __init__(self, volume: AbstractVolume, endpoint: str, verifiers: ArtifactVerifierContext) -> None:
        self.volume = volume
        self.events = RecordingEvents()
        self.tracker = RecordingTracker()
        self.tasks = RecordingTasks(self.events)
        self.verifiers = verifiers
        self.service = HuggingFaceService(
            HuggingFaceServiceArgs(
                registry_configs={REGISTRY: HuggingfaceConfig(endpoint=endpoint, token=None)},
                background_task_manager=self.tasks,  # type: ignore[arg-type]
                storage_pool=StoragePool({}),
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


def manager_body(
    repo: str, vfid: VFolderID, *, prefix: str | None = "/", revision: str = "main"
) -> dict[str, Any]:
    """The body the 26.9.6 manager sends to import into a vfolder: every step mapped to it."""
    target = {"vfolder_id": str(vfid), "volume_name": VOLUME}
    return {
        "models": [{"model_id": repo, "revision": revision}],
        "registry_name": REGISTRY,
        "storage_step_target_mappings": {"download": target, "verify": target, "archive": target},
        "storage_prefix": prefix,
    }


@pytest.fixture
def verifier_ctx() -> ArtifactVerifierContext:
    return ArtifactVerifierContext()


@pytest.fixture
async def proxy(volume: BaseVolume, hub: LocalHub, verifier_ctx: ArtifactVerifierContext) -> Proxy:
    return Proxy(volume, hub.base_url, verifier_ctx)


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    async with TestClient(TestServer(proxy.app())) as found:
        yield found


def pytest_configure(config: pytest.Config) -> None:
    # Their Valkey client's dependency warns about its own imports whenever pytest inspects modules.
    config.addinivalue_line("filterwarnings", "ignore:Importing from 'glide:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore::DeprecationWarning:aiomonitor.*")
    # Their server keeps its context under a string key (ai.backend.storage.server._init_subapp).
    config.addinivalue_line("filterwarnings", "ignore::aiohttp.web_exceptions.NotAppKeyWarning")
