"""Check a destination against its manifest: every listed file present, unchanged, and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import attrs

from .errors import ConfigError, StorageError, StorageFileNotFoundError
from .intent import finish_interrupted_commit, read_intent
from .manifest import MANIFEST_PATH
from .model import FileResult
from .reimport import manifest_files, read_manifest
from .resume import ParkedSummary, parked_summary
from .storages.base import AbstractStorage
from .streams import Hasher


@attrs.frozen
class FsckReport:
    """What :func:`check_destination` found. ``intact`` only if nothing is missing, changed or extra."""

    destination: str
    source: str
    commit: str
    checked: int
    total_bytes: int
    missing: tuple[str, ...] = ()
    #: (path, what differs)
    changed: tuple[tuple[str, str], ...] = ()
    extra: tuple[str, ...] = ()
    digests_checked: bool = True
    #: Part files killed imports left, removed by this check.
    removed_leftovers: tuple[str, ...] = ()
    #: A commit a killed import had started, completed by this check.
    completed_commit: bool = False
    #: What an interrupted import keeps in the reserved folder for the next import (not part of the artifact).
    parked: ParkedSummary | None = None

    @property
    def intact(self) -> bool:
        return not (self.missing or self.changed or self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "destination": self.destination,
            "source": self.source,
            "commit": self.commit,
            "checked": self.checked,
            "total_bytes": self.total_bytes,
            "digests_checked": self.digests_checked,
            "missing": list(self.missing),
            "changed": [{"path": p, "problem": why} for p, why in self.changed],
            "extra": list(self.extra),
            "removed_leftovers": list(self.removed_leftovers),
            "completed_commit": self.completed_commit,
            "parked": attrs.asdict(self.parked) if self.parked is not None else None,
        }


async def check_destination(storage: AbstractStorage, *, digests: bool = True, concurrency: int = 4) -> FsckReport:
    """Re-read ``storage`` and compare it with its manifest.

    With ``digests``, every file is read back and its sha256 compared (the
    bytes stream through, never held whole); without, sizes only. A commit
    a killed import left half done is completed first, unless an import is
    running there now.
    """
    removed: list[str] = []
    completed = False
    # Read again under the lock by finish_interrupted_commit: an import may finish it meanwhile.
    if storage.journals_writes or await read_intent(storage) is not None:
        try:
            async with storage.exclusive(wait=0):
                completed = await finish_interrupted_commit(storage)
                removed = await storage.remove_leftovers()
        except StorageError:
            pass  # an import holds the destination: it completes the commit itself
    manifest = await read_manifest(storage)
    if manifest is None:
        raise ConfigError(
            f"{storage.describe()}: no usable {MANIFEST_PATH}: not a destination of artifact-import, "
            "so there is nothing to check it against"
        )
    entries = manifest_files(manifest)
    limit = asyncio.Semaphore(concurrency)

    async def check(entry: FileResult) -> tuple[str, str | None]:
        async with limit:
            try:
                info = await storage.get_file_info(entry.path)
            except StorageFileNotFoundError:
                return entry.path, "missing"
            if info.size != entry.size:
                return entry.path, f"size {info.size}, the manifest says {entry.size}"
            if digests:
                hasher = Hasher("sha256")
                try:
                    async for chunk in storage.stream_download(entry.path):
                        await hasher.update(chunk)
                except StorageFileNotFoundError:
                    return entry.path, "missing"
                if hasher.hexdigest() != entry.sha256:
                    return entry.path, f"sha256 {hasher.hexdigest()}, the manifest says {entry.sha256}"
            return entry.path, None

    outcomes = await asyncio.gather(*(check(e) for e in entries.values()))
    missing = tuple(sorted(p for p, why in outcomes if why == "missing"))
    changed = tuple(sorted((p, why) for p, why in outcomes if why is not None and why != "missing"))
    extra = tuple(sorted([f.path async for f in storage.list_files() if f.path not in entries]))
    return FsckReport(
        destination=storage.describe(),
        source=str(manifest.get("source", "")),
        commit=str(manifest.get("commit", "")),
        checked=len(entries),
        total_bytes=sum(e.size for e in entries.values()),
        missing=missing,
        changed=changed,
        extra=extra,
        digests_checked=digests,
        removed_leftovers=tuple(removed),
        completed_commit=completed,
        parked=await parked_summary(storage),
    )
