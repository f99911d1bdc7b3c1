"""The request a Backend.AI manager (26.9.6) sends its storage proxy, answered by our server.

The body is the manager's ``HuggingFaceImportModelsReq`` as it sends it for a vfolder import (every step
mapped to the vfolder, ``storage_prefix`` "/"), or with named storages; the files land where the proxy
itself would put them. tests/backendai checks the same body against the real package's request model.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from artifact_import import MANIFEST_PATH, StoragePool, VFolderID, VFSStorage, VFSVolume, VolumePool
from artifact_import.proxy.manager import IMPORT_PATH
from artifact_import.proxy.routes import create_app
from artifact_import.storages.object import MiB

from .conftest import fast_registry, files_under, in_flight_files, repo_name
from .hub import LocalHub

SCOPE = f"user:{uuid.UUID('3f0c2b9e-8d7a-4e5b-9c1d-2a3b4c5d6e7f')}"
FILES: dict[str, bytes | int] = {"config.json": b'{"a": 1}', "model.safetensors": 2 * MiB, "tok/t.json": b"{}"}


class Server:
    def __init__(self, root: Path) -> None:
        self.registry = fast_registry()
        self.volume = VFSVolume("local", root / "vol", fsync=False)
        self.vfid = VFolderID(SCOPE, uuid.uuid4())
        self.volume.vfolder_path(self.vfid).mkdir(parents=True)
        self.models = VFSStorage("models", root / "models", fsync=False)
        self.app = create_app(
            {"huggingface": self.registry},
            storage_pool=StoragePool({"models": self.models, "scratch": VFSStorage("scratch", root / "scratch")}),
            volume_pool=VolumePool({"local": self.volume}),
        )
        self.client = TestClient(TestServer(self.app))

    def body(self, repo: str, *, prefix: str | None = "/", **targets: Any) -> dict[str, Any]:
        vfolder = {"vfolder_id": str(self.vfid), "volume_name": "local"}
        mappings = targets or {"download": vfolder, "verify": vfolder, "archive": vfolder}
        return {
            "models": [{"model_id": repo, "revision": "main"}],
            "registry_name": "huggingface",
            "storage_step_target_mappings": mappings,
            "storage_prefix": prefix,
        }

    async def run(self, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.client.post(IMPORT_PATH, json=body)
        assert resp.status == 202, await resp.text()
        accepted = await resp.json()
        assert set(accepted) == {"task_id"}
        task_id = str(uuid.UUID(accepted["task_id"]))
        for _ in range(1000):
            data: dict[str, Any] = await (await self.client.get(f"/import/{task_id}")).json()
            if data["state"] in ("succeeded", "failed", "cancelled"):
                return data
            await asyncio.sleep(0.02)
        raise AssertionError("the import did not finish")


@pytest.fixture
async def server(tmp_path: Path, hub: LocalHub) -> AsyncIterator[Server]:
    made = Server(tmp_path)  # its registry reads HF_ENDPOINT, which the hub fixture sets
    await made.client.start_server()
    yield made
    await made.client.close()


def published(hub: LocalHub, repo: str) -> dict[str, str]:
    commit = hub.repos[repo].refs["main"]
    return {p: f.sha256 for p, f in hub.repos[repo].commits[commit].items()}


@pytest.mark.parametrize("prefix", [None, "/", "models/custom"])
async def test_the_managers_vfolder_import_lands_where_its_prefix_says(
    prefix: str | None, server: Server, hub: LocalHub
) -> None:
    repo = repo_name("mgr")
    hub.create_repo(repo, FILES)
    done = await server.run(server.body(repo, prefix=prefix))
    assert done["state"] == "succeeded", done
    vfolder = server.volume.vfolder_path(server.vfid)
    folder = {None: f"{repo}/main", "/": "", "models/custom": "models/custom"}[prefix]
    stored = files_under(vfolder / folder if folder else vfolder)
    stored.pop(MANIFEST_PATH)
    assert {p: hashlib.sha256(b).hexdigest() for p, b in stored.items()} == published(hub, repo)
    assert in_flight_files(vfolder) == []


async def test_named_storages_and_the_deprecated_mappings(server: Server, hub: LocalHub, tmp_path: Path) -> None:
    """Staged in a named storage (the deprecated string form), archived in another named storage."""
    repo = repo_name("mgr")
    hub.create_repo(repo, FILES)
    body = server.body(repo, prefix=None, archive={"storage_name": "models"})
    body["storage_step_mappings"] = {"download": "scratch", "verify": "scratch"}
    done = await server.run(body)
    assert done["state"] == "succeeded", done
    stored = files_under(tmp_path / "models" / repo / "main")
    stored.pop(MANIFEST_PATH)
    assert set(stored) == set(FILES)
    assert not [p for p in (tmp_path / "scratch").rglob("*") if p.is_file()], "staged copies removed"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"models": []}, "models"),
        ({"models": [{"revision": "main"}]}, "models[0].model_id"),
        ({"registry_name": "nope"}, "registry_name"),
        ({"storage_prefix": "../escape"}, "storage_prefix"),
        ({"storage_prefix": 7}, "storage_prefix"),
        (
            {"storage_step_target_mappings": {"archive": {"vfolder_id": "user:nope/abc", "volume_name": "local"}}},
            "storage_step_target_mappings.archive.vfolder_id",
        ),
        (
            {"storage_step_target_mappings": {"archive": {"storage_name": "missing"}}},
            "storage_step_target_mappings.archive",
        ),
        (
            {"storage_step_target_mappings": {"upload": {"storage_name": "models"}}},
            "storage_step_target_mappings.upload",
        ),
        ({"storage_step_target_mappings": {}}, "storage_step_target_mappings"),
    ],
)
async def test_a_malformed_manager_request_is_refused_naming_the_field(
    change: dict[str, Any], field: str, server: Server
) -> None:
    body = {**server.body("org/model"), **change}
    resp = await server.client.post(IMPORT_PATH, json=body)
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == field


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "body"),  # deeper than json's recursion: a RecursionError, not a 500
        (b'{"registry_name": ' + b"1" * 5000 + b"}", 400, "registry_name"),  # int() takes quadratic time on it
        (b'{"x": NaN}', 400, "body"),
        (b"\xff\xfe{}", 400, "body"),
        (b'{"x": "' + b"a" * (300 * 1024) + b'"}', 413, "body"),
    ],
    ids=["deep", "long-number", "nan", "not-utf8", "too-large"],
)
async def test_a_hostile_manager_body_is_a_400_never_a_500(
    raw: bytes, status: int, field: str, server: Server
) -> None:
    resp = await server.client.post(IMPORT_PATH, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == status, await resp.text()
    assert (await resp.json())["error"]["field"] == field


async def test_staging_in_another_vfolder_is_refused(server: Server) -> None:
    other = {"vfolder_id": f"{SCOPE}/{uuid.uuid4().hex}", "volume_name": "local"}
    here = {"vfolder_id": str(server.vfid), "volume_name": "local"}
    resp = await server.client.post(IMPORT_PATH, json=server.body("org/model", download=other, archive=here))
    assert resp.status == 400
    assert (await resp.json())["error"]["field"] == "storage_step_target_mappings.download"


async def test_links_of_a_202_are_under_the_prefix_the_routes_are_mounted_at(tmp_path: Path, hub: LocalHub) -> None:
    """A storage proxy mounts our routes under a prefix of its own: the links of the answer must lead there."""
    repo = repo_name("mgr")
    hub.create_repo(repo, {"config.json": b"{}"})
    inner = Server(tmp_path)
    root = web.Application()
    root.add_subapp("/artifact-import", inner.app)
    async with TestClient(TestServer(root)) as client:
        body = {"models": [{"repo_id": repo}], "vfolder_id": f"local/{inner.vfid}"}
        accepted = await (await client.post("/artifact-import/import", json=body)).json()
        task = accepted["task_id"]
        assert accepted["links"] == {
            "self": f"/artifact-import/import/{task}",
            "events": f"/artifact-import/import/{task}/events",
        }
        for _ in range(500):
            followed = await client.get(accepted["links"]["self"])
            assert followed.status == 200
            if (await followed.json())["state"] == "succeeded":
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the import did not finish")


async def test_fields_a_newer_manager_may_add_are_ignored_as_the_proxy_ignores_them(
    server: Server, hub: LocalHub
) -> None:
    repo = repo_name("mgr")
    hub.create_repo(repo, {"config.json": b"{}"})
    done = await server.run({**server.body(repo), "priority": 3})
    assert done["state"] == "succeeded", done
