"""HTTP routes a storage proxy mounts to drive imports (aiohttp).

    POST   /import                  start an import; 202 {"task_id": ...} at once
    GET    /import                  every known task, without files
    GET    /import/{task_id}        state, per-file progress, verdicts, results, error
    DELETE /import/{task_id}        cancel; cleans up as a failed import does
    GET    /import/{task_id}/events progress as Server-Sent Events until the task ends
    POST   /v1/registries/huggingface/import   the Backend.AI manager's request (see .manager)

A body names the models, the registry, and where they go: storage names per
step (``storage_step_mappings``) or a user's vfolder (``vfolder_id``)::

    {"models": [{"repo_id": "org/model", "revision": "main"}],
     "registry_name": "huggingface",
     "vfolder_id": "local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41",
     "include": ["*.safetensors", "*.json"]}

A malformed body is answered ``400`` naming the field. With a secret
configured, every route answers ``401`` to a request without it (see
:mod:`.auth`); a full queue is ``429``, too many event streams ``429`` /
``503`` (see :mod:`.limits`), each with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..config import ServerSettings, VerifySettings
from ..errors import ArtifactImportError, ConfigError, ServiceBusyError, StorageNotFoundError
from ..model import ArtifactStorageImportStep, ModelTarget
from ..registries.base import AbstractRegistry
from ..signing import SignatureSettings
from ..storages.base import AbstractStoragePool
from ..verifiers import build_verifiers
from ..verifiers.base import Verifier
from ..volumes.base import VFolderID, VFolderRef, VolumePool
from .auth import Handler, token_middleware
from .body import MAX_BODY
from .body import BadRequest as _BadRequest
from .body import read_json as _read_json
from .limits import Busy, Limits, StreamSlots, busy_response, client_of
from .manager import manager_routes
from .service import ImportService, TaskView
from .webhooks import WebhookNotifier

Step = ArtifactStorageImportStep


log = logging.getLogger(__name__)

#: Seconds a client is told to wait when the task store cannot be reached.
_STORE_RETRY_AFTER = 5

SERVICE = web.AppKey("artifact_import.service", ImportService)

#: Task ids (ours are uuid hex; a request may name its own): no path separators, dots or spaces to play with.
TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
#: A body is a few hundred bytes; this leaves room for long include lists, not for abuse.
_MAX_MODELS = 100
_MAX_PATTERNS = 1000
_MAX_TEXT = 1024


def create_app(
    registries: Mapping[str, AbstractRegistry],
    *,
    storage_pool: AbstractStoragePool | None = None,
    volume_pool: VolumePool | None = None,
    verifiers: Sequence[Verifier] | None = None,
    settings: ServerSettings | None = None,
    authenticate: bool = True,
    signature: SignatureSettings | None = None,
) -> web.Application:
    """An application with the import routes; on shutdown, running imports are cancelled and cleaned up.

    ``verifiers`` default to those of a default ``[verify]`` section
    (safetensors headers, pickle scan failing on unsafe imports; no ClamAV).
    With ``settings.auth_token``, every request must present it (see
    :mod:`.auth`), unless ``authenticate`` is false: an application that
    mounts these routes behind its own check (Backend.AI's storage proxy)
    turns ours off. Event streams and queued imports are bounded by
    ``settings``; connections are the server's to bound (``serve`` runs
    :class:`.limits.LimitedRunner`).
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
        "max_queued_imports": settings.max_queued_imports,
        "on_finished": [notifier] if notifier is not None else [],
        "signature": signature,
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
    middlewares = [token_middleware(settings.auth_token)] if authenticate and settings.auth_token else []
    if service.store_errors:
        middlewares.append(store_unavailable_middleware(service.store_errors))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[SERVICE] = service
    app.add_routes(import_routes(service, limits=limits_of(settings)))
    # What a Backend.AI manager sends its storage proxy, so that a manager can be pointed at this one.
    app.add_routes(manager_routes(service))

    async def startup(_: web.Application) -> None:
        await service.start()

    app.on_startup.append(startup)

    async def shutdown(_: web.Application) -> None:
        await service.aclose()
        if notifier is not None:
            await notifier.aclose()

    app.on_shutdown.append(shutdown)
    return app


def store_unavailable_middleware(errors: tuple[type[BaseException], ...]) -> Middleware:
    """A request the task store cannot answer now (Redis restarting, unreachable): ``503`` saying to try again,
    not a ``500``; nothing of the store's error (its address may hold a password) is in the answer."""

    @web.middleware
    async def unavailable(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except errors as exc:
            what = type(exc).__name__
            log.warning("%s %s: the task store cannot be reached (%s)", request.method, request.path, what)
            return web.json_response(
                {"error": {"field": "task-store", "message": "the task store cannot be reached; try again shortly"}},
                status=503,
                headers={"Retry-After": str(_STORE_RETRY_AFTER)},
            )

    return unavailable


def limits_of(settings: ServerSettings) -> Limits:
    """The connection and event-stream limits ``settings`` name."""
    return Limits(
        max_connections=settings.max_connections,
        max_connections_per_client=settings.max_connections_per_client,
        max_event_streams=settings.max_event_streams,
        max_event_streams_per_client=settings.max_event_streams_per_client,
    )


def import_routes(service: ImportService, *, limits: Limits | None = None) -> web.RouteTableDef:
    """The routes alone, for a proxy that builds its own application and service."""
    routes = web.RouteTableDef()
    limits = limits or Limits()
    streams = StreamSlots(limits)

    @routes.post("/import")
    async def start(request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
            models, registry, vfolder, mappings, request_id, replace = _parse(service, body)
            task_id = await service.start_import(
                models,
                registry,
                vfolder=vfolder,
                storage_step_mappings=mappings,
                request_id=request_id,
                replace_existing=replace,
            )
        except _BadRequest as exc:
            return _error(exc.status, exc.field, exc.message)
        except ServiceBusyError as exc:
            retry_after = str(round(exc.retry_after))
            return _error(429, "body", exc.message, headers={"Retry-After": retry_after})
        except ArtifactImportError as exc:
            return _error(400, "body", exc.message)
        task = await service.fetch(task_id)
        # Where this route is mounted (a storage proxy mounts these routes under a prefix of its own).
        base = request.match_info.route.resource.canonical if request.match_info.route.resource else "/import"
        return web.json_response(
            {
                "task_id": task_id,
                "state": task.state.value,
                "links": {"self": f"{base}/{task_id}", "events": f"{base}/{task_id}/events"},
            },
            status=202,
        )

    @routes.get("/import")
    async def index(_: web.Request) -> web.Response:
        tasks = await service.fetch_all()
        return web.json_response({"tasks": [{**t.summary(), "created": t.created} for t in tasks]})

    async def find(request: web.Request) -> TaskView:
        task_id = request.match_info["task_id"]
        if not TASK_ID.fullmatch(task_id):
            raise web.HTTPBadRequest(
                text=json.dumps({"error": {"field": "task_id", "message": "not a task id"}}),
                content_type="application/json",
            )
        try:
            return await service.fetch(task_id)
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
        try:
            # A stream holds its connection (and in a fleet a Redis read) for as long as the import runs.
            with streams.hold(client_of(request)):
                return await _stream_events(request, task)
        except Busy as exc:
            return busy_response(exc, limits.retry_after)

    return routes


async def _stream_events(request: web.Request, task: TaskView) -> web.StreamResponse:
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


def _error(status: int, field: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"field": field, "message": message}}, status=status, headers=headers)


def _text(value: Any, field: str, *, limit: int = _MAX_TEXT) -> str:
    """``value`` if it is a string fit for a name: not too long, no NUL, valid Unicode."""
    if not isinstance(value, str):
        raise _BadRequest(field, "must be a string")
    if len(value) > limit:
        raise _BadRequest(field, f"must be at most {limit} characters")
    if "\x00" in value:
        raise _BadRequest(field, "must not contain NUL")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise _BadRequest(field, "must be valid Unicode (it holds a lone surrogate)") from None
    return value


def _parse(
    service: ImportService, body: Any
) -> tuple[list[ModelTarget], str, VFolderRef | None, dict[Step, str] | None, str | None, bool]:
    if not isinstance(body, dict):
        raise _BadRequest("body", "the body must be a JSON object")
    known = {
        "models",
        "registry_name",
        "storage_step_mappings",
        "vfolder_id",
        "include",
        "exclude",
        "request_id",
        "replace_existing",
    }
    for key in body:
        if key not in known:
            raise _BadRequest(_text(key, "body", limit=64), f"unknown field (known: {', '.join(sorted(known))})")
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
    if len(raw_models) > _MAX_MODELS:
        raise _BadRequest("models", f"at most {_MAX_MODELS} models a request")
    models = []
    for i, raw in enumerate(raw_models):
        if not isinstance(raw, dict):
            raise _BadRequest(f"models[{i}]", 'must be an object {"repo_id": ..., "revision": ...}')
        for key in raw:
            if key not in ("repo_id", "revision"):
                raise _BadRequest(f"models[{i}].{_text(key, f'models[{i}]', limit=64)}", "unknown field")
        repo_id = _text(raw.get("repo_id"), f"models[{i}].repo_id", limit=256)
        revision = _text(raw.get("revision", "main" if registry.scheme == "hf" else ""), f"models[{i}].revision")
        try:
            models.append(ModelTarget(repo_id, revision, include, exclude, scheme=registry.scheme))
        except ConfigError as exc:
            raise _BadRequest(f"models[{i}]", exc.message) from None
    vfolder = _vfolder(service, body.get("vfolder_id"))
    mappings = _mappings(service, body.get("storage_step_mappings"))
    if vfolder is None and (mappings is None or Step.ARCHIVE not in mappings):
        raise _BadRequest("vfolder_id", "give a vfolder_id, or storage_step_mappings with an archive storage")
    if vfolder is not None and mappings is not None and Step.ARCHIVE in mappings:
        raise _BadRequest("storage_step_mappings.archive", "give a vfolder_id or an archive storage, not both")
    request_id = body.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or not TASK_ID.fullmatch(request_id)):
        raise _BadRequest("request_id", "must be 1 to 128 letters, digits, _ or -, starting with a letter or digit")
    replace = body.get("replace_existing", False)
    if not isinstance(replace, bool):
        raise _BadRequest("replace_existing", "must be true or false")
    return models, registry_name, vfolder, mappings, request_id, replace


def _strings(body: dict[str, Any], key: str) -> tuple[str, ...]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise _BadRequest(key, "must be a list of glob strings")
    if len(value) > _MAX_PATTERNS:
        raise _BadRequest(key, f"at most {_MAX_PATTERNS} patterns")
    return tuple(_text(v, f"{key}[{i}]") for i, v in enumerate(value))


def _vfolder(service: ImportService, raw: Any) -> VFolderRef | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, str):
            ref = VFolderRef.parse(_text(raw, "vfolder_id"))
        elif isinstance(raw, dict):
            for key in raw:
                if key not in ("volume", "quota_scope_id", "folder_id", "subpath"):
                    raise _BadRequest(f"vfolder_id.{_text(key, 'vfolder_id', limit=64)}", "unknown field")
            parts = {
                key: _text(raw.get(key, ""), f"vfolder_id.{key}")
                for key in ("volume", "quota_scope_id", "folder_id", "subpath")
            }
            vfid = VFolderID(parts["quota_scope_id"], parts["folder_id"])
            ref = VFolderRef(parts["volume"], vfid, parts["subpath"].strip("/"))
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
                f"storage_step_mappings.{_text(key, 'storage_step_mappings', limit=64)}",
                "unknown step (known: download, verify, archive)",
            ) from None
        name = _text(name, f"storage_step_mappings.{key}", limit=256)
        try:
            if service.local_names:
                service.storage_pool.get_storage(name)
        except StorageNotFoundError as exc:
            raise _BadRequest(f"storage_step_mappings.{key}", exc.message) from None
        mappings[step] = name
    return mappings
