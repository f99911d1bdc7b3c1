"""The request a Backend.AI manager (26.9.6) sends its storage proxy to import Hugging Face models.

    POST /v1/registries/huggingface/import   202 {"task_id": UUID}

with the body of its ``HuggingFaceImportModelsReq``::

    {"models": [{"model_id": "org/model", "revision": "main"}],
     "registry_name": "huggingface",
     "storage_step_target_mappings": {
         "download": {"vfolder_id": "user:<uuid>/<hex>", "volume_name": "local"},
         "verify": {"vfolder_id": "user:<uuid>/<hex>", "volume_name": "local"},
         "archive": {"vfolder_id": "user:<uuid>/<hex>", "volume_name": "local"}},
     "storage_step_mappings": {"download": "scratch"},      # deprecated: step -> storage name
     "storage_prefix": "/"}

A step maps to a vfolder (``vfolder_id`` and ``volume_name``) or a named
storage (``storage_name``); ``storage_step_target_mappings`` wins over the
deprecated ``storage_step_mappings`` for a step both name. The files land
under ``storage_prefix`` in the destination: ``null`` means ``MODEL/REVISION``,
``"/"`` the root, anything else that folder, as the proxy itself lays them
out. The task is then an import task of ours (``GET /import/{task_id}``).
A malformed body is answered ``400`` naming the field; fields it does not
know are ignored, as the proxy's own request model ignores them.
"""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web

from ..errors import ArtifactImportError, ConfigError, ServiceBusyError, StorageNotFoundError
from ..model import ArtifactStorageImportStep, ModelTarget
from ..paths import path_problem
from ..volumes.base import VFolderID, VFolderRef
from .body import BadRequest, read_json
from .service import ImportService

Step = ArtifactStorageImportStep
#: Where the manager's storage proxy client posts an import.
IMPORT_PATH = "/v1/registries/huggingface/import"


def manager_routes(service: ImportService) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.post(IMPORT_PATH)
    async def start(request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
            parsed = parse_manager_request(service, body)
            task_id = await service.start_import(
                parsed.models,
                parsed.registry_name,
                vfolder=parsed.vfolder,
                storage_step_mappings=parsed.mappings or None,
                request_id=str(uuid.uuid4()),
                subpaths=parsed.subpaths,
            )
        except BadRequest as exc:
            return _error(exc.field, exc.message, exc.status)
        except ServiceBusyError as exc:
            return _error("body", exc.message, 429, headers={"Retry-After": str(round(exc.retry_after))})
        except ArtifactImportError as exc:
            return _error("body", exc.message)
        return web.json_response({"task_id": task_id}, status=202)

    return routes


class ManagerRequest:
    """What a manager's body asks for, in the terms of :meth:`ImportService.start_import`."""

    def __init__(
        self,
        models: list[ModelTarget],
        registry_name: str,
        vfolder: VFolderRef | None,
        mappings: dict[Step, str],
        subpaths: list[str],
    ) -> None:
        self.models = models
        self.registry_name = registry_name
        self.vfolder = vfolder
        self.mappings = mappings
        self.subpaths = subpaths


def parse_manager_request(service: ImportService, body: Any) -> ManagerRequest:
    if not isinstance(body, dict):
        raise BadRequest("body", "the body must be a JSON object")
    # Other fields are ignored, as the proxy's own request model ignores them: a newer manager may send more.
    registry_name = body.get("registry_name")
    if not isinstance(registry_name, str) or registry_name not in service.registries:
        known = ", ".join(sorted(service.registries)) or "none"
        raise BadRequest("registry_name", f"must name a configured registry ({known})")
    models = _models(body.get("models"))
    prefix = body.get("storage_prefix")
    if prefix is not None and not isinstance(prefix, str):
        raise BadRequest("storage_prefix", 'must be null (MODEL/REVISION), "/" (the root) or a folder')
    subpaths = [_subpath(prefix, m) for m in models]
    targets = _targets(body)
    if Step.ARCHIVE not in targets:
        # The proxy's own pipeline leaves the files in the last step mapped.
        mapped = [step for step in Step if step in targets]
        if not mapped:
            raise BadRequest("storage_step_target_mappings", "map the archive step (or any step) to a storage")
        targets[Step.ARCHIVE] = targets[mapped[-1]]
    archive = targets[Step.ARCHIVE]
    vfolder = archive if isinstance(archive, VFolderRef) else None
    mappings: dict[Step, str] = {}
    for step, target in targets.items():
        if isinstance(target, str):
            _check_storage(service, step, target)
            mappings[step] = target
        elif target != archive:
            raise BadRequest(
                f"storage_step_target_mappings.{step.value}",
                "stage in the archive vfolder or in a named storage, not in another vfolder",
            )
    if vfolder is not None:
        _check_volume(service, vfolder)
    return ManagerRequest(models, registry_name, vfolder, mappings, subpaths)


def _models(raw: Any) -> list[ModelTarget]:
    if not isinstance(raw, list) or not raw:
        raise BadRequest("models", 'must be a non-empty list of {"model_id": ..., "revision": ...}')
    models = []
    for i, model in enumerate(raw):
        if not isinstance(model, dict) or not isinstance(model.get("model_id"), str):
            raise BadRequest(f"models[{i}].model_id", "must be a string")
        revision = model.get("revision") or "main"
        if not isinstance(revision, str):
            raise BadRequest(f"models[{i}].revision", "must be a string")
        try:
            models.append(ModelTarget(model["model_id"], revision))
        except ConfigError as exc:
            raise BadRequest(f"models[{i}]", exc.message) from None
    return models


def _subpath(prefix: str | None, model: ModelTarget) -> str:
    folder = f"{model.repo_id}/{model.revision}" if prefix is None else prefix.strip("/")
    problem = path_problem(folder) if folder else None
    if problem is not None:
        raise BadRequest("storage_prefix", problem)
    return folder


def _targets(body: dict[str, Any]) -> dict[Step, VFolderRef | str]:
    """Each step's target: the deprecated names first, the structured targets over them."""
    targets: dict[Step, VFolderRef | str] = {}
    for key in ("storage_step_mappings", "storage_step_target_mappings"):
        raw = body.get(key)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise BadRequest(key, 'must map "download" / "verify" / "archive" to a storage')
        for name, target in raw.items():
            field = f"{key}.{name}"
            try:
                step = Step(name)
            except ValueError:
                raise BadRequest(field, "unknown step (known: download, verify, archive)") from None
            targets[step] = _target(field, target, structured=key == "storage_step_target_mappings")
    return targets


def _target(field: str, raw: Any, *, structured: bool) -> VFolderRef | str:
    if not structured:
        if not isinstance(raw, str) or not raw:
            raise BadRequest(field, "must be a storage name")
        return raw
    if isinstance(raw, dict) and set(raw) == {"storage_name"} and isinstance(raw["storage_name"], str):
        return str(raw["storage_name"])
    if isinstance(raw, dict) and set(raw) == {"vfolder_id", "volume_name"}:
        volume, vfid = raw["volume_name"], raw["vfolder_id"]
        if not isinstance(volume, str) or not volume or not isinstance(vfid, str):
            raise BadRequest(field, 'must be {"vfolder_id": "user:<uuid>/<hex>", "volume_name": "..."}')
        try:
            return VFolderRef(volume, VFolderID.parse(vfid))
        except ConfigError as exc:
            raise BadRequest(f"{field}.vfolder_id", exc.message) from None
    raise BadRequest(field, 'must be {"storage_name": ...} or {"vfolder_id": ..., "volume_name": ...}')


def _check_storage(service: ImportService, step: Step, name: str) -> None:
    if service.local_names:
        try:
            service.storage_pool.get_storage(name)
        except StorageNotFoundError as exc:
            raise BadRequest(f"storage_step_target_mappings.{step.value}", exc.message) from None


def _check_volume(service: ImportService, vfolder: VFolderRef) -> None:
    if service.local_names:
        try:
            service.volume_pool.get_volume(vfolder.volume)
        except StorageNotFoundError as exc:
            raise BadRequest("storage_step_target_mappings.archive.volume_name", exc.message) from None


def _error(field: str, message: str, status: int = 400, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"field": field, "message": message}}, status=status, headers=headers)
