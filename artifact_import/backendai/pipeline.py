"""The storage proxy's Hugging Face import pipeline, importing through artifact-import.

:func:`create_huggingface_import_pipeline` takes exactly what the proxy's
own factory takes and returns a pipeline its route and service run as they
run theirs (``await pipeline.execute(context)``). The import itself is ours:
the revision pinned to a commit, files fetched in parallel with ranges, every
byte hashed against the published digest and seen by our verifiers as it
passes, the proxy's verifier plugins run on the complete files, and only then
everything made visible at once; on any failure nothing is left.

What the proxy expects is kept: its storage targets (a vfolder, or a named
storage of its pool) and ``custom_storage_prefix`` (None: ``MODEL/REVISION``,
``"/"``: the root) say where files land; per-file progress goes to its
download tracker, ``ModelVerifyingEvent`` to its event producer; the verdicts
are in ``context.step_metadata["verification_result"]`` as its
``VerifierResult``s, and a refusal raises its errors.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ai.backend.common.clients.valkey_client.valkey_artifact.client import ValkeyArtifactDownloadTrackingClient
from ai.backend.common.data.artifact.types import ArtifactRegistryType, VerifierResult
from ai.backend.common.data.storage.types import ArtifactStorageImportStep as TheirStep
from ai.backend.common.events.dispatcher import EventProducer
from ai.backend.common.events.event_types.artifact.anycast import ModelImportDoneEvent, ModelVerifyingEvent
from ai.backend.storage.context_types import ArtifactVerifierContext
from ai.backend.storage.data.storage.types import ImportStepContext as TheirContext
from ai.backend.storage.data.storage.types import StorageTarget as TheirStorageTarget
from ai.backend.storage.errors import ArtifactVerifyStorageTypeInvalid, RegistryNotFoundError
from ai.backend.storage.plugin import AbstractArtifactVerifierPlugin
from ai.backend.storage.services.artifacts.storage_transfer import StorageTransferManager
from ai.backend.storage.services.artifacts.types import ImportPipeline as TheirImportPipeline

from ..context import ImportStepContext, StorageTarget
from ..errors import ArtifactImportError, ConfigError, UnsafePathError, VerificationError
from ..model import ArtifactStorageImportStep, FileResult, ModelTarget
from ..paths import path_problem
from ..pipeline import ImportPipeline
from ..registries.huggingface import HuggingFaceRegistry
from ..storages.base import AbstractStorage, PendingWrite, StoragePool
from ..storages.vfs import VFSStorage
from ..verifiers import build_verifiers
from .errors import to_theirs
from .settings import BridgeSettings, current
from .storage import BridgedVFolderStorage, StorageResolver
from .tracker import DownloadTracker, TrackedRegistry
from .verdicts import our_results, run_plugins, step_result

log = logging.getLogger(__name__)

Step = ArtifactStorageImportStep


def create_huggingface_import_pipeline(
    registry_configs: dict[str, Any],
    transfer_manager: StorageTransferManager,
    storage_step_mappings: dict[TheirStep, TheirStorageTarget],
    artifact_verifier_ctx: ArtifactVerifierContext,
    event_producer: EventProducer,
    redis_client: ValkeyArtifactDownloadTrackingClient,
) -> TheirImportPipeline:
    """The drop-in for ``ai.backend.storage.services.artifacts.huggingface.create_huggingface_import_pipeline``
    (same parameters): its route, with this factory in place of its own, imports through artifact-import.

    ``transfer_manager`` is not used: bytes go straight from the hub into the destination's pending writes
    (or through a staging storage the mappings name, by our own copy)."""
    return HuggingFaceImportPipeline(
        registry_configs, storage_step_mappings, artifact_verifier_ctx, event_producer, redis_client
    )


class HuggingFaceImportPipeline(TheirImportPipeline):
    """Their ``ImportPipeline`` (what their service runs), importing through ours; see the module."""

    def __init__(
        self,
        registry_configs: Mapping[str, Any],
        storage_step_mappings: Mapping[TheirStep, TheirStorageTarget],
        artifact_verifier_ctx: ArtifactVerifierContext,
        event_producer: EventProducer,
        redis_client: ValkeyArtifactDownloadTrackingClient,
        *,
        settings: BridgeSettings | None = None,
    ) -> None:
        super().__init__([])
        self._registry_configs = registry_configs
        self._mappings = dict(storage_step_mappings)
        self._verifier_ctx = artifact_verifier_ctx
        self._events = event_producer
        self._tracking = redis_client
        self._settings = settings

    async def execute(self, context: TheirContext) -> None:
        settings = self._settings or current()
        model = context.model
        revision = model.resolve_revision(ArtifactRegistryType.HUGGINGFACE)
        config = self._registry_configs.get(context.registry_name)
        if config is None:
            raise RegistryNotFoundError(f"Unknown registry: {context.registry_name}")
        mappings = context.storage_step_mappings or self._mappings
        plugins = self._plugins()
        try:
            ours = _our_context(context, mappings, ModelTarget(model.model_id, revision))
            local = await _local_root(ours.storage_for(Step.ARCHIVE))
        except ArtifactImportError as exc:
            raise to_theirs(exc) from exc
        if plugins and local is None:
            raise ArtifactVerifyStorageTypeInvalid(
                "the storage proxy's verifier plugins read files from disk: import into a vfolder or a VFS storage"
            )
        tracker = DownloadTracker(self._tracking, model.model_id, revision)
        registry = HuggingFaceRegistry(
            context.registry_name,
            endpoint=getattr(config, "endpoint", None),
            token=getattr(config, "token", None),
            retry=settings.retry,
            timeouts=settings.timeouts,
        )
        pipeline = _BridgePipeline(
            {registry.name: TrackedRegistry(registry, tracker)},
            build_verifiers(settings.verify),
            max_concurrent_files=settings.max_concurrent_files,
            plugins=plugins,
            their_context=context,
            verifying=(
                ModelVerifyingEvent(
                    model_id=model.model_id,
                    revision=revision,
                    registry_type=ArtifactRegistryType.HUGGINGFACE,
                    registry_name=context.registry_name,
                )
                if TheirStep.VERIFY in mappings
                else None
            ),
            events=self._events,
        )
        failure: BaseException | None = None
        try:
            result = await pipeline.run(ours, tracker.on_progress)
        except BaseException as exc:
            failure = exc
            if isinstance(exc, VerificationError):
                await self._refused(context, revision, pipeline, exc)
            if isinstance(exc, ArtifactImportError):
                raise to_theirs(exc) from exc
            raise
        finally:
            await tracker.aclose(failure)
            await registry.aclose()
        context.step_metadata["verification_result"] = step_result(pipeline.verdicts)
        context.step_metadata["artifact_import"] = {
            "commit": result.commit,
            "destination": result.destination,
            "manifest": result.manifest_path,
            "files": len(result.files),
            "bytes": result.total_bytes,
            "fetched_bytes": result.fetched_bytes,
            "seconds": round(result.seconds, 3),
        }

    def _plugins(self) -> dict[str, AbstractArtifactVerifierPlugin]:
        """The proxy's verifier plugins, but ours: its verifiers saw every byte already."""
        from .plugins import ArtifactImportVerifierPlugin

        return {
            name: plugin
            for name, plugin in self._verifier_ctx._verifiers.items()
            if not isinstance(plugin, ArtifactImportVerifierPlugin)
        }

    async def _refused(
        self, context: TheirContext, revision: str, pipeline: _BridgePipeline, exc: VerificationError
    ) -> None:
        """Record why, and say it in a done event: their service's own (sent next) carries no verdicts."""
        verdicts = pipeline.verdicts or our_results(
            [(exc.path or "", v) for v in exc.verdicts], pipeline.started_at, time.monotonic() - pipeline.started
        )
        result = step_result(verdicts)
        context.step_metadata["verification_result"] = result
        await self._events.anycast_event(
            ModelImportDoneEvent(
                model_id=context.model.model_id,
                revision=revision,
                registry_type=ArtifactRegistryType.HUGGINGFACE,
                registry_name=context.registry_name,
                success=False,
                digest=None,
                verification_result=result,
            )
        )


class _BridgePipeline(ImportPipeline):
    """Our pipeline, which also runs the proxy's verifier plugins on the files before any is visible."""

    def __init__(
        self,
        *args: Any,
        plugins: Mapping[str, AbstractArtifactVerifierPlugin],
        their_context: TheirContext,
        verifying: ModelVerifyingEvent | None,
        events: EventProducer,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.plugins = dict(plugins)
        self.their_context = their_context
        self.verifying = verifying
        self.events = events
        self.started = time.monotonic()
        self.started_at = datetime.now(UTC)
        #: Every verifier's result, ours and the plugins', once every file is verified.
        self.verdicts: dict[str, VerifierResult] = {}

    async def before_commit(
        self,
        context: ImportStepContext,
        destination: AbstractStorage,
        pending: Sequence[PendingWrite],
        results: Sequence[FileResult],
    ) -> None:
        self.verdicts = our_results(
            [(f.path, v) for f in results for v in f.verdicts], self.started_at, time.monotonic() - self.started
        )
        if self.verifying is not None:
            await self.events.anycast_event(self.verifying)
        root = await _local_root(destination)
        if not self.plugins or root is None:
            return
        inside = f"{destination.root_subpath}/" if isinstance(destination, BridgedVFolderStorage) else ""
        files = [(w.path.removeprefix(inside), w.local_path) for w in pending]
        found = await run_plugins(self.plugins, root, files, self.their_context)
        self.verdicts.update(found)
        refused = [
            f"{name}: {r.error or f'{r.infected_count} infected file(s)'}" for name, r in found.items() if not r.success
        ]
        if refused:
            raise VerificationError(
                f"{context.model.uri}: refused by the storage proxy's verifier plugins ({'; '.join(refused)}); "
                "nothing was kept"
            )


def _our_context(
    context: TheirContext, mappings: Mapping[TheirStep, TheirStorageTarget], model: ModelTarget
) -> ImportStepContext:
    """Their context as ours: one storage per place the steps map to, the destination under the prefix."""
    resolver = StorageResolver(context.storage_pool)
    steps = {Step(str(step.value)): resolver.resolve(target) for step, target in mappings.items()}
    if not steps:
        raise ConfigError("no storage step mappings: map the archive step (or every step) to a storage")
    # Their pipeline leaves the files in the last step mapped.
    last = [s for s in Step if s in steps][-1]
    archive = steps[last]
    prefix = _prefix(context.custom_storage_prefix, model)
    destination = archive.subpath(prefix) if prefix else archive
    targets: dict[Step, StorageTarget] = {}
    for step, storage in steps.items():
        targets[step] = StorageTarget(destination if storage is archive else storage)
    targets[Step.ARCHIVE] = StorageTarget(destination)
    return ImportStepContext(
        model=model,
        registry_name=context.registry_name,
        storage_pool=StoragePool(),
        storage_step_mappings=targets,
        step_metadata={},
    )


def _prefix(custom: str | None, model: ModelTarget) -> str:
    """Where in the destination the files go, as their steps put them: ``MODEL/REVISION`` by default, the
    root for ``"/"`` (or an empty prefix), else the prefix given."""
    prefix = f"{model.repo_id}/{model.revision}" if custom is None else custom.strip("/")
    problem = path_problem(prefix) if prefix else None
    if problem is not None:
        raise UnsafePathError([(prefix, f"as a storage prefix: {problem}")])
    return prefix


async def _local_root(storage: AbstractStorage) -> Path | None:
    """Where ``storage``'s files are on a local filesystem, if they are."""
    if isinstance(storage, BridgedVFolderStorage):
        return await storage.local_root()
    if isinstance(storage, VFSStorage):
        return storage.root
    return None
