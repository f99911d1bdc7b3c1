"""What ``verify`` reports of a destination checked against its manifest, and the file-by-file comparison."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import attrs

from .._aio import map_bounded
from ..errors import StorageFileNotFoundError
from ..model import FileResult, SignatureVerdict
from ..storages.base import AbstractStorage
from ..streams import Hasher
from .record import ParkedSummary


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
    #: What the import found of the model's signature, as its manifest records it (None: an older manifest).
    signature: SignatureVerdict | None = None
    #: An import has completed here (there is a manifest). If not, ``parked`` says what an interrupted first
    #: import left, and nothing of the artifact is there yet.
    committed: bool = True

    @property
    def intact(self) -> bool:
        return self.committed and not (self.missing or self.changed or self.extra)

    def to_dict(self) -> dict[str, Any]:
        return {
            "intact": self.intact,
            "committed": self.committed,
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
            "signature": self.signature.to_dict() if self.signature is not None else None,
        }


async def compare(
    storage: AbstractStorage, entries: Mapping[str, FileResult], *, digests: bool, concurrency: int
) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """The files of ``entries`` missing from ``storage``, and those that differ (with what differs).

    With ``digests``, every file is read back and its sha256 compared (the
    bytes stream through, never held whole); without, sizes only.
    """
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

    outcomes = await map_bounded(check, list(entries.values()), concurrency)
    missing = tuple(sorted(p for p, why in outcomes if why == "missing"))
    changed = tuple(sorted((p, why) for p, why in outcomes if why is not None and why != "missing"))
    return missing, changed
