"""Importing again into a destination that holds an earlier import: what need not move again.

A file is skipped when the destination's manifest lists it with the same
size and the same content (the same source at the same commit, or the same
published sha256), every verifier of this run has an ok verdict for it on
record, and the stored file still has that size (and that sha256, where the
storage keeps one beside the object). Anything less, and the file is
fetched and verified again.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import hashlib
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._aio import map_bounded
from ..errors import ArtifactImportError
from ..model import ArtifactFile, FileResult, ResolvedArtifact
from ..storages.base import AbstractStorage, FileInfo
from ..verifiers.base import Verifier
from .manifest import manifest_files

log = logging.getLogger(__name__)

#: Stored files looked at together.
_BATCH = 4096


async def already_present(
    storage: AbstractStorage,
    artifact: ResolvedArtifact,
    verifiers: Sequence[Verifier],
    manifest: dict[str, Any] | None,
) -> dict[str, FileResult]:
    """The files of ``artifact`` that ``storage`` already holds, verified as this run would verify them."""
    if manifest is None:
        return {}
    same_version = manifest.get("source") == artifact.source and manifest.get("commit") == artifact.commit
    entries = manifest_files(manifest)
    # Each entry held once from here (a repository of 200,000 files: the manifest's list, the entries by path,
    # then the results beside them, and a look at every stored file at once were an import's peak memory).
    del manifest
    candidates: collections.deque[tuple[ArtifactFile, FileResult]] = collections.deque()
    for file in artifact.files:
        entry = entries.pop(file.path, None)
        if entry is None or file.size is None or entry.size != file.size:
            continue
        if not (same_version or (file.sha256 is not None and entry.sha256 == file.sha256.lower())):
            continue
        required = {v.name for v in verifiers if v.applies_to(file)}
        if not required <= {v.verifier for v in entry.kept_verdicts if v.ok}:
            continue
        candidates.append((file, entry))
    del entries

    async def stored(infos: Mapping[str, FileInfo], pair: tuple[ArtifactFile, FileResult]) -> FileResult | None:
        file, entry = pair
        info = infos.get(file.path)
        if info is None:
            return None
        if info.size != file.size or (info.sha256 is not None and info.sha256 != entry.sha256):
            return None
        if info.stamp is not None and info.stamp != entry.stamp:
            # Touched since it was written (or written before stamps were kept): trusted only once read
            # again. A same-size change in place is caught here, not only by `verify`.
            try:
                if await _sha256_of(storage, file.path) != entry.sha256:
                    log.info("%s: changed in place since the last import; fetching it again", file.path)
                    return None
            except ArtifactImportError:
                return None
        # The listing's path, not the manifest's equal copy: 200,000 of these are held until the commit.
        return attrs.evolve(entry, path=file.path, skipped=True, stamp=info.stamp)

    present: dict[str, FileResult] = {}
    while candidates:
        # A batch at a time: a directory still looks a folder at a time (a look per file took minutes at
        # 200,000 files), and each entry is let go once its result is made.
        batch = [candidates.popleft() for _ in range(min(_BATCH, len(candidates)))]
        infos = await storage.file_infos([file.path for file, _ in batch])
        checked = await map_bounded(functools.partial(stored, infos), batch)  # map_bounded: 16 at once
        present.update((r.path, r) for r in checked if r is not None)
    return present


async def unrecorded(
    storage: AbstractStorage, artifact: ResolvedArtifact, manifest: dict[str, Any] | None
) -> list[str]:
    """The paths of ``artifact`` that ``storage`` holds although its manifest does not list them: files no
    earlier import of this destination wrote (a user's own, of the same names), which an import would replace."""
    recorded = manifest_files(manifest) if manifest is not None else {}
    candidates = [f.path for f in artifact.files if f.path not in recorded]
    del recorded
    return sorted(await storage.file_infos(candidates))


async def _sha256_of(storage: AbstractStorage, path: str) -> str:
    digest = hashlib.sha256()
    async for chunk in storage.stream_download(path):
        await asyncio.to_thread(digest.update, chunk)  # off the loop: stored files can be many GB
    return digest.hexdigest()
