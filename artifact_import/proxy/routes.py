"""HTTP routes a storage proxy mounts to drive imports (aiohttp).

    POST   /import                  start an import; 202 {"task_id": ...} at once
    GET    /import                  every known task, without files
    GET    /import/{task_id}        state, per-file progress, verdicts, results, error
    DELETE /import/{task_id}        cancel; cleans up as a failed import does
    GET    /import/{task_id}/events progress as Server-Sent Events until the task ends

A body names the models, the registry, and where they go: storage names per
step (``storage_step_mappings``) or a user's vfolder (``vfolder_id``)::

    {"models": [{"repo_id": "org/model", "revision": "main"}],
     "registry_name": "huggingface",
     "vfolder_id": "local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41",
     "include": ["*.safetensors", "*.json"]}

A malformed body is answered ``400`` naming the field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from ..config import ServerSettings, VerifySettings
from ..errors import ArtifactImportError, ConfigError, StorageNotFoundError
from ..model import ArtifactStorageImportStep, ModelTarget
from ..registries.base import AbstractRegistry
from ..storages.base import AbstractStoragePool
from ..verifiers import build_verifiers
from ..verifiers.base import Verifier
from ..volumes.base import VFolderID, VFolderRef, VolumePool
from .service import ImportService, TaskView
from .webhooks import WebhookNotifier

Step = ArtifactStorageImportStep


SERVICE = web.AppKey("artifact_import.service", ImportService)


class _BadRequest(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def create_app(
    registries: Mapping[str, AbstractRegistry],
    *,
    storage_pool: AbstractStoragePool | None = None,
    volume_pool: VolumePool | None = None,
    verifiers: Sequence[Verifier] | None = None,
    settings: ServerSettings | None = None,
) -> web.Application:
    """An application with the import routes; on shutdown, running imports are cancelled and cleaned up.

    ``verifiers`` default to those of a default ``[verify]`` section
    (safetensors headers, pickle scan failing on unsafe imports; no ClamAV).
    """
    settings = settings or ServerSettings()
    if verifiers is None:
        verifiers = build_verifiers(VerifySettings())
    notifier = (
        WebhookNotifier(settings.webhooks, attempts=settings.webhook_attempts, backoff=settings.webhook_backoff)
        if settings.webhooks
        else None
    )
    common: dict[str, Any] = {
        "storage_pool": storage_pool,
        "volume_pool": volume_pool,
        "verifiers": verifiers,
        "staging": settings.staging,
        "max_concurrent_imports": settings.max_concurrent_imports,
        "max_concurrent_files": settings.max_concurrent_files,
        "on_finished": [notifier] if notifier is not None else [],
    }
    service: ImportService
    if settings.task_store is not None:
        from .fleet import FleetImportService

        service = FleetImportService(
            registries,
            redis_url=settings.task_store,
            lease=settings.lease,
            finished_ttl=settings.finished_ttl,
            **common,
        )
    else:
        service = ImportService(registries, **common)
    app = web.Application()
    app[SERVICE] = service
    app.add_routes(import_routes(service))

    async def startup(_: web.Application) -> None:
        await service.start()

    app.on_startup.append(startup)

    async def shutdown(_: web.Application) -> None:
        await service.aclose()
        if notifier is not None:
            await notifier.aclose()

    app.on_shutdown.append(shutdown)
    return app


def import_routes(service: ImportService) -> web.RouteTableDef:
    """The routes alone, for a proxy that builds its own application and service."""
    routes = web.RouteTableDef()

    @routes.post("/import")
    async def start(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "body", "the body must be a JSON object")
        try:
            models, registry, vfolder, mappings, request_id = _parse(service, body)
            task_id = await service.start_import(
                models, registry, vfolder=vfolder, storage_step_mappings=mappings, request_id=request_id
            )
        except _BadRequest as exc:
            return _error(400, exc.field, exc.message)
        except ArtifactImportError as exc:
            return _error(400, "body", exc.message)
        task = await service.fetch(task_id)
        return web.json_response(
            {
                "task_id": task_id,
                "state": task.state.value,
                "links": {"self": f"/import/{task_id}", "events": f"/import/{task_id}/events"},
            },
            status=202,
        )

    @routes.get("/import")
    async def index(_: web.Request) -> web.Response:
        tasks = await service.fetch_all()
        return web.json_response({"tasks": [{**t.summary(), "created": t.created} for t in tasks]})

    async def find(request: web.Request) -> TaskView:
        try:
            return await service.fetch(request.match_info["task_id"])
        except ConfigError as exc:
            raise web.HTTPNotFound(
                text=json.dumps({"error": {"field": "task_id", "message": exc.message}}),
                content_type="application/json",
            ) from None

    @routes.get("/import/{task_id}")
    async def status(request: web.Request) -> web.Response:
        return web.json_response((await find(request)).to_dict())

    @routes.delete("/import/{task_id}")
    async def cancel(request: web.Request) -> web.Response:
        task = await service.cancel_task((await find(request)).id)
        return web.json_response(task.to_dict())

    @routes.get("/import/{task_id}/events")
    async def events(request: web.Request) -> web.StreamResponse:
        task = await find(request)
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        stream = task.subscribe()
        async with contextlib.aclosing(stream):
            async for kind, data in stream:
                await response.write(f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response

    return routes


def _error(status: int, field: str, message: str) -> web.Response:
    return web.json_response({"error": {"field": field, "message": message}}, status=status)


def _parse(
    service: ImportService, body: Any
) -> tuple[list[ModelTarget], str, VFolderRef | None, dict[Step, str] | None, str | None]:
    if not isinstance(body, dict):
        raise _BadRequest("body", "the body must be a JSON object")
    known = {"models", "registry_name", "storage_step_mappings", "vfolder_id", "include", "exclude", "request_id"}
    for key in body:
        if key not in known:
            raise _BadRequest(key, f"unknown field (known: {', '.join(sorted(known))})")
    registry_name = body.get("registry_name")
    if registry_name is None and len(service.registries) == 1:
        registry_name = next(iter(service.registries))
    if not isinstance(registry_name, str) or registry_name not in service.registries:
        known_names = ", ".join(sorted(service.registries)) or "none"
        raise _BadRequest("registry_name", f"must name a configured registry ({known_names})")
    registry = service.registries[registry_name]
    include = _strings(body, "include")
    exclude = _strings(body, "exclude")
    raw_models = body.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise _BadRequest("models", 'must be a non-empty list of {"repo_id": ..., "revision": ...}')
    models = []
    for i, raw in enumerate(raw_models):
        if not isinstance(raw, dict) or not isinstance(raw.get("repo_id"), str):
            raise _BadRequest(f"models[{i}].repo_id", "must be a string")
        revision = raw.get("revision", "main" if registry.scheme == "hf" else "")
        if not isinstance(revision, str):
            raise _BadRequest(f"models[{i}].revision", "must be a string")
        try:
            models.append(ModelTarget(raw["repo_id"], revision, include, exclude, scheme=registry.scheme))
        except ConfigError as exc:
            raise _BadRequest(f"models[{i}]", exc.message) from None
    vfolder = _vfolder(service, body.get("vfolder_id"))
    mappings = _mappings(service, body.get("storage_step_mappings"))
    if vfolder is None and (mappings is None or Step.ARCHIVE not in mappings):
        raise _BadRequest("vfolder_id", "give a vfolder_id, or storage_step_mappings with an archive storage")
    if vfolder is not None and mappings is not None and Step.ARCHIVE in mappings:
        raise _BadRequest("storage_step_mappings.archive", "give a vfolder_id or an archive storage, not both")
    request_id = body.get("request_id")
    if request_id is not None and (
        not isinstance(request_id, str) or not request_id.isprintable() or "/" in request_id
    ):
        raise _BadRequest("request_id", "must be a printable string without /")
    return models, registry_name, vfolder, mappings, request_id


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _BadRequest(key, "must be a list of glob strings")
    return tuple(value)


def _vfolder(service: ImportService, raw: Any) -> VFolderRef | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, str):
            ref = VFolderRef.parse(raw)
        elif isinstance(raw, dict):
            vfid = VFolderID(str(raw.get("quota_scope_id")), str(raw.get("folder_id")))
            ref = VFolderRef(str(raw.get("volume")), vfid, str(raw.get("subpath", "")).strip("/"))
            VFolderRef.parse(str(ref))  # the same checks as the string form
        else:
            raise ConfigError("must be VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH] or an object")
        if service.local_names:
            service.volume_pool.get_volume(ref.volume)
    except (ConfigError, StorageNotFoundError) as exc:
        raise _BadRequest("vfolder_id", exc.message) from None
    return ref


def _mappings(service: ImportService, raw: Any) -> dict[Step, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _BadRequest("storage_step_mappings", 'must map "download" / "verify" / "archive" to storage names')
    mappings: dict[Step, str] = {}
    for key, name in raw.items():
        try:
            step = Step(key)
        except ValueError:
            raise _BadRequest(
                f"storage_step_mappings.{key}", "unknown step (known: download, verify, archive)"
            ) from None
        if not isinstance(name, str):
            raise _BadRequest(f"storage_step_mappings.{key}", "must be a storage name")
        try:
            if service.local_names:
                service.storage_pool.get_storage(name)
        except StorageNotFoundError as exc:
            raise _BadRequest(f"storage_step_mappings.{key}", exc.message) from None
        mappings[step] = name
    return mappings
