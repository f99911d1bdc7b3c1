"""Our plugins as the storage proxy loads them, and our own server answering its manager's request."""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import uuid
import warnings
from pathlib import Path
from typing import Any

import pytest
from ai.backend.common.data.storage.registries.types import ModelTarget
from ai.backend.common.dto.storage.request import HuggingFaceImportModelsReq, StorageMappingResolverData
from ai.backend.storage.api.manager import token_auth_middleware
from ai.backend.storage.config.unified import HuggingfaceConfig, StorageProxyUnifiedConfig
from ai.backend.storage.context import RootContext
from ai.backend.storage.context_types import ArtifactVerifierContext
from ai.backend.storage.data.storage.types import ImportStepContext, StorageMappingResolver
from ai.backend.storage.errors import ArtifactVerificationFailedError
from ai.backend.storage.plugin import StorageArtifactVerifierPluginContext, StorageManagerWebappPluginContext
from ai.backend.storage.server import _init_subapp
from ai.backend.storage.services.artifacts.huggingface import create_huggingface_import_pipeline
from ai.backend.storage.services.artifacts.storage_transfer import StorageTransferManager
from ai.backend.storage.storages.storage_pool import StoragePool
from ai.backend.storage.volumes.pool import VolumePool
from ai.backend.storage.volumes.vfs import BaseVolume
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from artifact_import import VFSVolume
from artifact_import import VolumePool as OurVolumePool
from artifact_import.backendai.plugins import ArtifactImportVerifierPlugin
from artifact_import.backendai.webapp import ArtifactImportWebappPlugin
from artifact_import.proxy.manager import IMPORT_PATH
from artifact_import.proxy.routes import create_app
from artifact_import.registries.huggingface import HuggingFaceRegistry
from tests.hub import LocalHub
from tests.modelfiles import Payload

from .theirs import (
    REGISTRY,
    VOLUME,
    RecordingEvents,
    RecordingTasks,
    RecordingTracker,
    files_of,
    manager_body,
    new_vfolder,
)

MiB = 1 << 20
SECRET = "storage-proxy-secret-for-tests"


async def loaded_verifier_plugins() -> ArtifactVerifierContext:
    """Their verifier plugins as their root context loads them (discovery by entry point, then init)."""
    ctx = ArtifactVerifierContext()
    found = {}
    for name, cls in StorageArtifactVerifierPluginContext.discover_plugins(
        StorageArtifactVerifierPluginContext.plugin_group
    ):
        plugin = cls({}, {})
        await plugin.init()
        found[name] = plugin
    ctx.load_verifiers(found)
    return ctx


async def their_pipeline(
    volume: BaseVolume, hub: LocalHub, repo: str, vfid: Any, prefix: str | None
) -> tuple[ImportStepContext, Any]:
    """Their own pipeline (their factory, their resolver) for a vfolder import, with their plugins loaded."""
    mappings = StorageMappingResolver(VolumePool({VOLUME: volume})).resolve(
        StorageMappingResolverData(
            storage_step_target_mappings=manager_body(repo, vfid)["storage_step_target_mappings"]
        )
    )
    pool = StoragePool({})
    pipeline = create_huggingface_import_pipeline(
        registry_configs={REGISTRY: HuggingfaceConfig(endpoint=hub.base_url, token=None)},
        transfer_manager=StorageTransferManager(pool),
        storage_step_mappings=mappings,
        artifact_verifier_ctx=await loaded_verifier_plugins(),
        event_producer=RecordingEvents(),  # type: ignore[arg-type]
        redis_client=RecordingTracker(),  # type: ignore[arg-type]
    )
    context = ImportStepContext(
        model=ModelTarget(model_id=repo, revision="main"),
        registry_name=REGISTRY,
        storage_pool=pool,
        storage_step_mappings=mappings,
        step_metadata={},
        custom_storage_prefix=prefix,
    )
    return context, pipeline


async def test_their_plugin_context_finds_our_verifier_plugin() -> None:
    ctx = await loaded_verifier_plugins()
    assert isinstance(ctx._verifiers["artifact-import"], ArtifactImportVerifierPlugin)


async def test_a_malicious_pickle_is_refused_by_our_verifier_plugin_inside_their_own_pipeline(
    volume: BaseVolume, hub: LocalHub, publish: Any, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    repo, _ = publish({"config.json": b"{}", "pytorch_model.bin": pickle.dumps(Payload(str(marker)), protocol=2)})
    vfid = await new_vfolder(volume)
    context, pipeline = await their_pipeline(volume, hub, repo, vfid, None)
    with pytest.raises(ArtifactVerificationFailedError):
        await pipeline.execute(context)
    ours = context.step_metadata["verification_result"].verifiers["artifact-import"]
    assert not ours.success and ours.infected_count == 1 and ours.scanned_count == 2
    assert "pickle" in ours.metadata["pytorch_model.bin"] and "os" in ours.metadata["pytorch_model.bin"]
    assert not marker.exists()


async def test_our_verifier_plugin_passes_a_clean_model_inside_their_own_pipeline(
    volume: BaseVolume, hub: LocalHub, publish: Any
) -> None:
    repo, _ = publish({"config.json": b"{}", "model.safetensors": MiB})
    vfid = await new_vfolder(volume)
    context, pipeline = await their_pipeline(volume, hub, repo, vfid, None)
    await pipeline.execute(context)
    ours = context.step_metadata["verification_result"].verifiers["artifact-import"]
    assert ours.success and ours.scanned_count == 2


async def test_our_verifier_plugin_fails_closed_when_their_pipeline_points_it_at_no_folder(
    volume: BaseVolume, hub: LocalHub, publish: Any
) -> None:
    """With the prefix the manager sends ("/"), their VERIFY step names a folder that does not exist: their
    verifiers would pass having seen nothing; ours refuses."""
    repo, _ = publish({"config.json": b"{}", "model.safetensors": MiB})
    vfid = await new_vfolder(volume)
    context, pipeline = await their_pipeline(volume, hub, repo, vfid, "/")
    with pytest.raises(ArtifactVerificationFailedError):
        await pipeline.execute(context)
    ours = context.step_metadata["verification_result"].verifiers["artifact-import"]
    assert not ours.success and ours.scanned_count == 0 and "no such folder" in (ours.error or "")


def their_config(mount: Path, hub: LocalHub) -> StorageProxyUnifiedConfig:
    return StorageProxyUnifiedConfig.model_validate(
        {
            "storage-proxy": {
                "node-id": "i-test",
                "num-proc": 1,
                "pid-file": str(mount.parent / "proxy.pid"),
                "event-loop": "asyncio",
                "scandir-limit": 1000,
                "secret": "client-secret",
                "session-expire": 60,
            },
            "etcd": {"namespace": "local", "addr": {"host": "127.0.0.1", "port": 2379}},
            "api": {
                "client": {"service-addr": {"host": "127.0.0.1", "port": 6021}, "ssl-enabled": False},
                "manager": {
                    "service-addr": {"host": "127.0.0.1", "port": 6022},
                    "secret": SECRET,
                    "ssl-enabled": False,
                },
            },
            "volume": {VOLUME: {"backend": "vfs", "path": str(mount)}},
            "artifact-registries": {REGISTRY: {"type": "huggingface", "huggingface": {"endpoint": hub.base_url}}},
        }
    )


async def test_our_routes_through_their_webapp_plugin_behind_their_token(
    volume: BaseVolume, hub: LocalHub, publish: Any
) -> None:
    """Loaded as their manager API loads webapp plugins, mounted by their ``_init_subapp``."""
    repo, commit = publish({"config.json": b"{}", "model.safetensors": 2 * MiB})
    vfid = await new_vfolder(volume)
    config = their_config(volume.mount_path, hub)
    events = RecordingEvents()
    root_ctx = RootContext(  # type: ignore[call-arg]
        pid=0,
        pidx=0,
        node_id="i-test",
        local_config=config,
        etcd=None,  # type: ignore[arg-type]
        volume_pool=VolumePool({VOLUME: volume}),
        storage_pool=StoragePool({}),
        event_producer=events,  # type: ignore[arg-type]
        event_dispatcher=None,  # type: ignore[arg-type]
        watcher=None,
        metric_registry=None,  # type: ignore[arg-type]
        background_task_manager=RecordingTasks(events),  # type: ignore[arg-type]
        cors_options={},
        manager_client_pool=None,  # type: ignore[arg-type]
        valkey_artifact_client=RecordingTracker(),  # type: ignore[arg-type]
        valkey_tus_client=None,  # type: ignore[arg-type]
        health_probe=None,  # type: ignore[arg-type]
        volume_stats_observer=None,  # type: ignore[arg-type]
        volume_stats_state=None,  # type: ignore[arg-type]
        backends={},
        artifact_verifier_ctx=ArtifactVerifierContext(),
    )
    manager_api = web.Application(middlewares=[token_auth_middleware])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)  # their interface is this string key
        manager_api["ctx"] = root_ctx
    plugins = dict(StorageManagerWebappPluginContext.discover_plugins(StorageManagerWebappPluginContext.plugin_group))
    plugin = plugins["artifact-import"](plugin_config={}, local_config=config.model_dump())
    assert isinstance(plugin, ArtifactImportWebappPlugin)
    await plugin.init()
    subapp, middlewares = await plugin.create_app(root_ctx.cors_options)
    _init_subapp("artifact-import", manager_api, subapp, middlewares)
    body = {"models": [{"repo_id": repo}], "vfolder_id": f"{VOLUME}/{vfid}"}
    auth = {"X-BackendAI-Storage-Auth-Token": SECRET}
    async with TestClient(TestServer(manager_api)) as client:
        refused = await client.post("/artifact-import/import", json=body)
        assert refused.status == 403, "behind their token middleware"
        accepted = await client.post("/artifact-import/import", json=body, headers=auth)
        assert accepted.status == 202, await accepted.text()
        links = (await accepted.json())["links"]
        assert links["self"].startswith("/artifact-import/import/")
        for _ in range(1000):
            status = await (await client.get(links["self"], headers=auth)).json()
            if status["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert status["state"] == "succeeded", status
        assert status["models"][0]["result"]["commit"] == commit
        # The manager's own request, under the same mount.
        vfid2 = await new_vfolder(volume)
        answer = await client.post(f"/artifact-import{IMPORT_PATH}", json=manager_body(repo, vfid2), headers=auth)
        assert answer.status == 202 and set(await answer.json()) == {"task_id"}
        task = (await answer.json())["task_id"]
        for _ in range(1000):
            status = await (await client.get(f"/artifact-import/import/{task}", headers=auth)).json()
            if status["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert status["state"] == "succeeded", status
    await plugin.cleanup()
    for folder in (vfid, vfid2):
        stored = files_of(volume.mangle_vfpath(folder))
        assert (
            hashlib.sha256(stored["model.safetensors"]).hexdigest()
            == hub.repos[repo].commits[commit]["model.safetensors"].sha256
        )


async def test_our_serve_answers_the_managers_exact_body_into_a_vfolder_their_volume_made(
    volume: BaseVolume, hub: LocalHub, publish: Any
) -> None:
    """The manager pointed at artifact-import: its body (valid for its own request model) into a vfolder their
    BaseVolume created, which our VFSVolume on the same mount opens (one layout)."""
    repo, _ = publish({"config.json": b"{}", "model.safetensors": 2 * MiB})
    vfid = await new_vfolder(volume)
    body = manager_body(repo, vfid, prefix=None)
    HuggingFaceImportModelsReq.model_validate(body)
    ours = VFSVolume(VOLUME, volume.mount_path, fsync=False)
    registry = HuggingFaceRegistry(REGISTRY, endpoint=hub.base_url)
    app = create_app({REGISTRY: registry}, volume_pool=OurVolumePool({VOLUME: ours}))
    async with TestClient(TestServer(app)) as client:
        answer = await client.post(IMPORT_PATH, json=body)
        assert answer.status == 202, await answer.text()
        task = str(uuid.UUID((await answer.json())["task_id"]))
        for _ in range(1000):
            status = await (await client.get(f"/import/{task}")).json()
            if status["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.02)
        assert status["state"] == "succeeded", status
    await registry.aclose()
    # Read back through their volume: the files are where their BaseVolume looks.
    chunks = [c async for c in volume.read_file(vfid, Path(f"{repo}/main/model.safetensors"))]  # type: ignore[arg-type]
    assert (
        hashlib.sha256(b"".join(chunks)).hexdigest()
        == hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.safetensors"].sha256
    )


async def test_the_plugin_setting_makes_their_own_route_import_through_ours(
    volume: BaseVolume, hub: LocalHub, publish: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Instead of the one-line change: ``replace-huggingface-pipeline = true`` in the plugin's etcd config."""
    from ai.backend.storage.api.v1.registries import huggingface as their_route

    from .theirs import Proxy

    theirs = their_route.create_huggingface_import_pipeline
    monkeypatch.setattr(their_route, "create_huggingface_import_pipeline", theirs)  # restored whatever happens
    plugin = ArtifactImportWebappPlugin({"replace-huggingface-pipeline": "true"}, {})
    await plugin.init()
    repo, _ = publish({"config.json": b"{}", "w.bin": MiB})
    vfid = await new_vfolder(volume)
    proxy = Proxy(volume, hub.base_url, ArtifactVerifierContext())
    async with TestClient(TestServer(proxy.app())) as client:
        answer = await client.post("/v1/registries/huggingface/import", json=manager_body(repo, vfid))
        await proxy.tasks.result(uuid.UUID((await answer.json())["task_id"]))
    # Only ours writes a manifest, and theirs would have deleted nothing here but verified nothing either.
    assert set(files_of(volume.mangle_vfpath(vfid))) == {"config.json", "w.bin", ".artifact-import/manifest.json"}
    await plugin.cleanup()
    assert their_route.create_huggingface_import_pipeline is theirs
