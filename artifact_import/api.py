"""The one-call entry point: import a source into a destination."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from .context import ImportStepContext, StorageTarget
from .journal import ImportPlan
from .model import DEFAULT_CONCURRENT_FILES, ArtifactStorageImportStep, ImportResult, ModelTarget
from .pipeline import ImportPipeline, ProgressCallback
from .registries.base import AbstractRegistry
from .registries.huggingface import HuggingFaceRegistry
from .signing import SignatureSettings
from .storages.base import AbstractStorage, StoragePool
from .storages.vfs import VFSStorage
from .verifiers.base import Verifier


async def import_artifact(
    source: str | ModelTarget,
    destination: str | os.PathLike[str] | AbstractStorage,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    registry: AbstractRegistry | None = None,
    verifiers: Sequence[Verifier] = (),
    on_progress: ProgressCallback | None = None,
    max_concurrent_files: int = DEFAULT_CONCURRENT_FILES,
    quarantine: AbstractStorage | None = None,
    skip_present: bool = True,
    keep_partial: bool = False,
    lock_wait: float | None = None,
    on_lock_wait: Callable[[], None] | None = None,
    replace_existing: bool = True,
    signature: SignatureSettings | None = None,
) -> ImportResult:
    """Import ``source`` (``hf://ORG/NAME[@REV]``) into ``destination`` (a directory or a storage).

    Every file is verified against the digests its source published before
    any of them becomes visible; on any error nothing of the import remains.
    Files an earlier import of the same content left at the destination are
    not fetched again unless ``skip_present`` is false. With ``keep_partial``,
    an interrupted import keeps the files it verified aside, and the next
    call finishes the rest. One import per destination at a time: another
    one into the same destination waits up to ``lock_wait`` seconds (None:
    as long as it takes; ``on_lock_wait`` is called when waiting starts).
    Files at the destination that no earlier import wrote are replaced, as
    ``hf download`` replaces them, and named in the result's ``replaced``;
    with ``replace_existing=False`` they fail the import
    (:class:`DestinationConflictError`) before any byte moves.
    ``signature`` requires or checks the model's signature (``model.sig``)
    and holds every file to it (see :mod:`artifact_import.signing`).
    """
    own_registry = registry is None
    reg = registry if registry is not None else HuggingFaceRegistry()
    context = _context(source, destination, include, exclude, reg)
    pipeline = ImportPipeline(
        {reg.name: reg},
        verifiers,
        max_concurrent_files=max_concurrent_files,
        quarantine=quarantine,
        skip_present=skip_present,
        keep_partial=keep_partial,
        lock_wait=lock_wait,
        on_lock_wait=on_lock_wait,
        replace_existing=replace_existing,
        signature=signature,
    )
    try:
        return await pipeline.run(context, on_progress)
    finally:
        if own_registry:
            await reg.aclose()


async def plan_import(
    source: str | ModelTarget,
    destination: str | os.PathLike[str] | AbstractStorage,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    registry: AbstractRegistry | None = None,
    verifiers: Sequence[Verifier] = (),
    skip_present: bool = True,
) -> ImportPlan:
    """What :func:`import_artifact` with the same arguments would fetch, skip or resume, with sizes (a dry
    run): the source is listed, the destination only read; nothing is written anywhere."""
    own_registry = registry is None
    reg = registry if registry is not None else HuggingFaceRegistry()
    pipeline = ImportPipeline({reg.name: reg}, verifiers, skip_present=skip_present)
    try:
        return await pipeline.plan(_context(source, destination, include, exclude, reg))
    finally:
        if own_registry:
            await reg.aclose()


def _context(
    source: str | ModelTarget,
    destination: str | os.PathLike[str] | AbstractStorage,
    include: Sequence[str],
    exclude: Sequence[str],
    registry: AbstractRegistry,
) -> ImportStepContext:
    model = (
        source
        if isinstance(source, ModelTarget)
        else ModelTarget.from_uri(source, include=tuple(include), exclude=tuple(exclude))
    )
    storage = destination if isinstance(destination, AbstractStorage) else VFSStorage("destination", destination)
    return ImportStepContext(
        model=model,
        registry_name=registry.name,
        storage_pool=StoragePool(),
        storage_step_mappings={ArtifactStorageImportStep.ARCHIVE: StorageTarget(storage)},
    )
