from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from artifact_import import ArtifactFile, HuggingFaceRegistry, RetryPolicy, Verdict, Verifier
from artifact_import.registries.http import HttpTimeouts
from artifact_import.registries.ranges import ParallelPolicy
from artifact_import.storages.hflocal import is_bookkeeping
from artifact_import.storages.vfs import PART_SUFFIX

from .clamd import Clamd
from .hub import Faults, HubServer, LocalHub
from .s3server import S3Server

ROOT = Path(__file__).resolve().parent.parent
# They need the Backend.AI storage proxy (Python 3.13): scripts/test.sh runs them in .venv-backendai.
collect_ignore = ["backendai"]
_names = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-points",
        type=int,
        default=4,
        help="how many moments of an import the kill -9 test ends it at (default 4; more for a longer hunt)",
    )


# What the tests make under the temporary directory is removed when they are done with it: a passing test's
# tmp_path at once (tmp_path_retention_policy = "failed" in pyproject.toml), and the folders of the session's
# servers (the hub's blobs, the S3 server's data, clamd's database) when the server stops. A run used to leave
# about 2.5 GB behind, kept for the last three runs.


@pytest.fixture(autouse=True)
def hf_environment(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep huggingface_hub away from the public hub and the user's cache and token."""
    home = tmp_path_factory.mktemp("hf-home")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    yield
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    data = tmp_path_factory.mktemp("hub-data")
    server = HubServer(LocalHub(data))
    server.start()
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def hub(hub_server: HubServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalHub]:
    """The local hub, with fresh fault switches and request log, as ``HF_ENDPOINT``."""
    local = hub_server.hub
    local.faults = Faults()
    local.requests.clear()
    local.unknown_requests.clear()
    local.lfs_redirect = True
    monkeypatch.setenv("HF_ENDPOINT", hub_server.url)
    yield local
    local.faults = Faults()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """The S3 server the tests use: JuiceFS's S3 gateway unless configured otherwise (see ``s3server``)."""
    data = tmp_path_factory.mktemp("s3")
    server = S3Server.default(data)
    yield server
    server.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def own_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto server of this test's own, for tests that kill it."""
    data = tmp_path_factory.mktemp("moto")
    server = S3Server.start_moto(data)
    yield server
    server.kill()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="session")
def clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A real clamd with stock limits and a test signature database (EICAR)."""
    data = tmp_path_factory.mktemp("clamd")
    daemon = Clamd(data).start()
    yield daemon
    daemon.stop()
    shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def own_clamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    """A clamd of this test's own, for tests that kill it."""
    data = tmp_path_factory.mktemp("clamd")
    daemon = Clamd(data).start()
    yield daemon
    daemon.kill()
    shutil.rmtree(data, ignore_errors=True)


def repo_name(prefix: str = "model") -> str:
    """A repository id no other test uses (the hub lives for the whole session)."""
    return f"test-org/{prefix}-{next(_names)}"


_registries: list[HuggingFaceRegistry] = []


def fast_registry(max_attempts: int = 4, *, connections: int | None = None) -> HuggingFaceRegistry:
    """A registry whose retries do not make the tests wait; closed after the test.

    ``connections=1``: one connection per file, for tests that pace an import by the hub's per-connection rate.
    """
    retry = RetryPolicy(max_attempts=max_attempts, backoff_base=0.01, backoff_max=0.05)
    parallel = ParallelPolicy(connections=connections) if connections is not None else None
    registry = HuggingFaceRegistry(retry=retry, timeouts=HttpTimeouts(read=5.0), parallel=parallel)
    _registries.append(registry)
    return registry


@pytest.fixture(autouse=True)
async def _close_registries() -> AsyncIterator[None]:
    yield
    while _registries:
        await _registries.pop().aclose()


async def verdict_of(verifier: Verifier, name: str, data: bytes, chunk: int = 65536, *, listed: bool = True) -> Verdict:
    """What ``verifier`` says of ``data`` fed as an import feeds it, ``chunk`` bytes at a time; not ``listed``:
    a file whose size the source did not say (the content scanners then read it in a thread as it comes,
    whatever its size, chunk boundaries and all)."""
    session = verifier.start(ArtifactFile(name, len(data) if listed else None))
    for off in range(0, len(data), chunk):
        await session.feed(data[off : off + chunk])
    return await session.finish()


def in_flight_files(root: Path) -> list[Path]:
    """Files being written under ``root``: in a partial folder's incomplete/, or a library temp file."""
    if not root.exists():
        return []
    journal = [p for p in root.rglob("*") if p.is_file() and "/.artifact-import/partial/incomplete/" in p.as_posix()]
    return journal + list(root.rglob(f"*{PART_SUFFIX}"))


def files_under(root: Path, *, bookkeeping: bool = False) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes; without ``bookkeeping``, not what ``hf download --local-dir``
    keeps in ``.cache/huggingface/`` (written by every import from the Hub into a directory; see
    test_hf_local_dir.py)."""
    found = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
    return {rel: p.read_bytes() for rel, p in found.items() if bookkeeping or not is_bookkeeping(rel)}


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
    )


def start_import(repo: str, dest: Path | str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``artifact-import import hf://REPO --to DEST`` in a process of its own, to signal or kill while it runs."""
    return subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", "import", f"hf://{repo}", "--to", str(dest), *extra],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: object, proc: subprocess.Popen[str], what: str, timeout: float = 30) -> None:
    """Until ``condition()`` holds, failing if the import ``proc`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert proc.poll() is None, f"the import ended before {what}: {proc.communicate()[1]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout}s"
        time.sleep(0.02)
