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
from collections.abc import AsyncIterator, Callable, Iterator, Mapping  # noqa: E402

import pytest  # noqa: E402
import uvloop  # noqa: E402
from ai.backend.storage.context_types import ArtifactVerifierContext  # noqa: E402
from ai.backend.storage.volumes.vfs import BaseVolume  # noqa: E402
from aiohttp import web  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from .theirs import Proxy, base_volume  # noqa: E402

_names = itertools.count()


def pytest_unconfigure(config: pytest.Config) -> None:
    _DEFAULT_HUB.stop()
    shutil.rmtree(_DEFAULT_HUB.hub.data_dir, ignore_errors=True)
    shutil.rmtree(_HOME, ignore_errors=True)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests marked ``uvloop`` run on asyncio's loop and again on uvloop, the one their storage proxy runs
    with ``event-loop = "uvloop"`` (uvloop is one of their package's dependencies)."""
    loops: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if item.get_closest_marker("uvloop") is not None:
        loops["uvloop"] = uvloop.new_event_loop
    return loops


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


@pytest.fixture
async def volume(tmp_path: Path) -> AsyncIterator[BaseVolume]:
    found = await base_volume(tmp_path / "vfroot")
    yield found
    await found.shutdown()


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
