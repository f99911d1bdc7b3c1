"""Their Hugging Face route, driven with the 26.9.6 manager's exact body, with its factory replaced by ours."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from ai.backend.storage.api.v1.registries import huggingface as their_route
from ai.backend.storage.context_types import ArtifactVerifierContext
from ai.backend.storage.data.storage.types import ImportStepContext
from ai.backend.storage.plugin import AbstractArtifactVerifierPlugin, VerifierPluginResult
from ai.backend.storage.volumes.vfs import BaseVolume
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import artifact_import.backendai
from tests.hub import SIGNATURE, LocalHub

from .theirs import Proxy, base_volume, files_of, folders_of, manager_body, new_vfolder

MiB = 1 << 20
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {"a": 0}}',
    "model.safetensors": 3 * MiB + 17,
    "weights/shard-1.bin": 2 * MiB + 5,
}

Client = TestClient[web.Request, web.Application]


@pytest.fixture(autouse=True)
def ours(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-line change: their route builds its pipeline with our factory."""
    monkeypatch.setattr(
        their_route, "create_huggingface_import_pipeline", artifact_import.backendai.create_huggingface_import_pipeline
    )


class SeeingPlugin(AbstractArtifactVerifierPlugin):
    """A verifier plugin of theirs, as an operator would install one: records what it is shown."""

    def __init__(self) -> None:
        super().__init__({}, {})
        self.seen: list[dict[str, bytes]] = []
        self.infected: set[str] = set()

    async def init(self, context: Any = None) -> None:
        pass

    async def cleanup(self) -> None:
        pass

    async def update_plugin_config(self, plugin_config: Any) -> None:
        pass

    async def verify(self, artifact_path: Path, context: ImportStepContext) -> VerifierPluginResult:
        files = files_of(artifact_path)
        self.seen.append(files)
        bad = sorted(self.infected & set(files))
        return VerifierPluginResult(scanned_count=len(files), infected_count=len(bad), metadata=dict.fromkeys(bad, "x"))


@pytest.fixture
def plugin(verifier_ctx: ArtifactVerifierContext) -> SeeingPlugin:
    found = SeeingPlugin()
    verifier_ctx.load_verifiers({"operator-scanner": found})
    return found


def published(hub: LocalHub, repo: str) -> dict[str, str]:
    """sha256 of each file as the hub publishes it."""
    commit = hub.repos[repo].refs["main"]
    return {path: f.sha256 for path, f in hub.repos[repo].commits[commit].items()}


async def post_import(client: Client, body: dict[str, Any]) -> Any:
    response = await client.post("/v1/registries/huggingface/import", json=body)
    assert response.status == 202, await response.text()
    return (await response.json())["task_id"]


async def finish(proxy: Proxy, task_id: str) -> Any:
    return await proxy.tasks.result(uuid.UUID(task_id))


@pytest.mark.uvloop
@pytest.mark.parametrize("prefix", [None, "/"])
async def test_a_vfolder_import_lands_where_the_prefix_says_and_stays(
    prefix: str | None,
    proxy: Proxy,
    client: Client,
    volume: BaseVolume,
    hub: LocalHub,
    default_hub: LocalHub,
    publish: Any,
    plugin: SeeingPlugin,
) -> None:
    repo, commit = publish(FILES)
    vfid = await new_vfolder(volume)
    outcome = await finish(proxy, await post_import(client, manager_body(repo, vfid, prefix=prefix)))
    assert outcome.result_type.value == "success" if hasattr(outcome, "result_type") else True
    root = volume.mangle_vfpath(vfid)
    where = root / repo / "main" if prefix is None else root
    stored = files_of(where)
    manifest = stored.pop(".artifact-import/manifest.json")
    assert {p: hashlib.sha256(b).hexdigest() for p, b in stored.items()} == published(hub, repo)
    assert commit.encode() in manifest
    if prefix is None:
        assert set(files_of(root)) == {f"{repo}/main/{p}" for p in [*stored, ".artifact-import/manifest.json"]}
    # Their verifier plugins saw every file, complete, before any was visible.
    assert [{p: hashlib.sha256(b).hexdigest() for p, b in seen.items()} for seen in plugin.seen] == [
        published(hub, repo)
    ]
    (done,) = proxy.events.of("ModelImportDoneEvent")
    assert done.success and done.digest == commit and done.revision == "main" and done.model_id == repo
    verifiers = done.verification_result.verifiers
    assert verifiers["operator-scanner"].success and verifiers["operator-scanner"].scanned_count == len(FILES)
    assert verifiers["artifact-import:checksum"].scanned_count == len(FILES)
    assert all(r.success for r in verifiers.values())
    assert len(proxy.events.of("ModelVerifyingEvent")) == 1
    # Per-file progress: every file registered at its size, then received in full.
    (init,) = [c for kind, c in proxy.tracker.calls if kind == "init"]
    assert dict(init["files"]) == {p: (len(v) if isinstance(v, bytes) else v) for p, v in FILES.items()}
    last = proxy.tracker.last()
    assert {p: (c["success"], c["current_bytes"] == c["total_bytes"]) for p, c in last.items()} == {
        p: (True, True) for p in FILES
    }
    # The registry config's endpoint served the listing and the bytes; their own client's commit call (in
    # their service, for the done event's digest) is the one request the default endpoint saw.
    assert {p for _, p, _ in hub.requests} == set(FILES)
    assert default_hub.requests == []
    assert all("/revision/" in call for call in default_hub.api_requests)


async def test_stays_imported_when_steps_each_have_their_own_adapter(
    proxy: Proxy, client: Client, volume: BaseVolume, publish: Any
) -> None:
    """Their resolver gives each step its own VFolderStorage: still one destination, nothing deleted after."""
    repo, _ = publish({"config.json": b"{}", "w.bin": MiB})
    vfid = await new_vfolder(volume)
    await finish(proxy, await post_import(client, manager_body(repo, vfid, prefix=None)))
    await asyncio.sleep(0.1)
    assert set(files_of(volume.mangle_vfpath(vfid) / repo / "main")) == {
        "config.json",
        "w.bin",
        ".artifact-import/manifest.json",
    }


async def test_a_byte_flipped_in_transit_fails_the_import_and_leaves_nothing(
    proxy: Proxy, client: Client, volume: BaseVolume, hub: LocalHub, publish: Any, plugin: SeeingPlugin
) -> None:
    repo, _ = publish(FILES)
    hub.faults.flip_byte["weights/shard-1.bin"] = 1000
    vfid = await new_vfolder(volume)
    await finish(proxy, await post_import(client, manager_body(repo, vfid)))
    root = volume.mangle_vfpath(vfid)
    assert files_of(root) == {} and folders_of(root) == []
    assert plugin.seen == [], "nothing reaches their plugins before our checks pass"
    ours, theirs = proxy.events.of("ModelImportDoneEvent")
    assert not ours.success and not theirs.success
    checksum = ours.verification_result.verifiers["artifact-import:checksum"]
    assert not checksum.success and checksum.infected_count == 1
    assert "sha256 mismatch" in checksum.metadata["weights/shard-1.bin"]
    assert proxy.tracker.last()["weights/shard-1.bin"]["success"] is False


async def test_a_403_mid_file_fails_in_bounded_time_with_no_partial_file_and_no_signed_url(
    proxy: Proxy,
    client: Client,
    volume: BaseVolume,
    hub: LocalHub,
    publish: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo, _ = publish(FILES)
    # The connection drops after 1 MiB; every request after that is refused, as a CDN refuses an expired URL.
    hub.faults.drop_after["model.safetensors"] = [MiB]
    hub.faults.errors["model.safetensors"] = [(0, None)] + [(403, None)] * 50
    vfid = await new_vfolder(volume)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    await finish(
        proxy,
        await post_import(client, manager_body(repo, vfid)),
    )
    assert time.monotonic() - started < 60
    root = volume.mangle_vfpath(vfid)
    assert files_of(root) == {} and folders_of(root) == []
    (ours,) = proxy.events.of("ModelImportDoneEvent")  # only theirs: not a verification refusal
    assert not ours.success
    shown = [repr(e) for e in proxy.events.anycast] + [repr(c) for c in proxy.tracker.calls] + caplog.messages
    assert not [line for line in shown if SIGNATURE.split("=")[1] in line]
    failed = proxy.tracker.last()["model.safetensors"]
    assert failed["success"] is False and "HTTP 403" in failed["error_message"]
    # Served in part (the drop), then asked for again and refused.
    assert len([r for r in hub.requests if r[1] == "model.safetensors"]) >= 2


async def test_cancel_ends_promptly_and_leaves_nothing(
    proxy: Proxy, client: Client, volume: BaseVolume, hub: LocalHub, publish: Any
) -> None:
    repo, _ = publish(FILES)
    hub.faults.slow_bps = 1 * MiB
    vfid = await new_vfolder(volume)
    task_id = await post_import(client, manager_body(repo, vfid))
    root = volume.mangle_vfpath(vfid)
    for _ in range(500):
        if any(c["current_bytes"] > 0 for kind, c in proxy.tracker.calls if kind == "update"):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("no byte arrived")
    assert any(p.name.endswith(".artifact-import-part") for p in root.rglob("*")), "mid-import"
    task = proxy.tasks.tasks[uuid.UUID(task_id)]
    started = time.monotonic()
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.done() and time.monotonic() - started < 5
    assert files_of(root) == {} and folders_of(root) == []


async def test_a_quota_limit_below_the_models_size_is_refused_before_any_byte(
    tmp_path: Path, hub: LocalHub, publish: Any, verifier_ctx: ArtifactVerifierContext
) -> None:
    from .test_volume import LimitedQuotaModel, LimitedVolume

    repo, _ = publish(FILES)  # about 5 MiB; the quota model reports 3 MiB
    volume = await base_volume(tmp_path / "vfroot", LimitedVolume)
    proxy = Proxy(volume, hub.base_url, verifier_ctx)
    vfid = await new_vfolder(volume)
    async with TestClient(TestServer(proxy.app())) as client:
        await finish(proxy, await post_import(client, manager_body(repo, vfid)))
    assert hub.requests == [], "not one byte fetched"
    root = volume.mangle_vfpath(vfid)
    assert files_of(root) == {} and folders_of(root) == []
    (done,) = proxy.events.of("ModelImportDoneEvent")
    assert not done.success
    assert LimitedQuotaModel.limit == 3 * MiB


async def test_steps_mapped_to_a_named_storage_of_their_pool_stage_there(
    tmp_path: Path, volume: BaseVolume, hub: LocalHub, publish: Any, verifier_ctx: ArtifactVerifierContext
) -> None:
    """DOWNLOAD and VERIFY into their named VFS storage, ARCHIVE into the vfolder: staged, then nothing left."""
    from ai.backend.storage.config.unified import VFSStorageConfig
    from ai.backend.storage.storages.vfs_storage import VFSStorage as TheirVFSStorage

    scratch = tmp_path / "scratch"
    storage = TheirVFSStorage("scratch", VFSStorageConfig(base_path=scratch))
    proxy = Proxy(volume, hub.base_url, verifier_ctx, {"scratch": storage})
    repo, _ = publish(FILES)
    vfid = await new_vfolder(volume)
    body = manager_body(repo, vfid, prefix=None)
    body["storage_step_target_mappings"]["download"] = {"storage_name": "scratch"}
    body["storage_step_target_mappings"]["verify"] = {"storage_name": "scratch"}
    async with TestClient(TestServer(proxy.app())) as client:
        await finish(proxy, await post_import(client, body))
    stored = files_of(volume.mangle_vfpath(vfid) / repo / "main")
    stored.pop(".artifact-import/manifest.json")
    assert {p: hashlib.sha256(b).hexdigest() for p, b in stored.items()} == published(hub, repo)
    assert files_of(scratch) == {}, "staged copies removed"
    (done,) = proxy.events.of("ModelImportDoneEvent")
    assert done.success
