"""Finishing an interrupted import instead of starting over.

When an import is interrupted (Ctrl-C, a source that went away) the files
it had already verified are *parked*: kept, complete, under
``.artifact-import/partial/files/`` with a record of their verdicts, never
under the names the artifact uses; the files it was still receiving are
parked as they are, under ``.artifact-import/partial/incomplete/``. The next
import of the same source and commit into the same destination adopts the
complete ones (they become visible with the rest, at commit), and for the
incomplete ones re-reads the bytes it has (every verifier sees the whole
file again) and fetches only the rest. A verification failure parks
nothing: it discards everything, as it always did.

Object storage parks a verified file by keeping its multipart upload open
(invisible) with a token at the parked name; it cannot park half-received
or small files. Storages that cannot park abort as before.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import attrs

from .._aio import run_to_completion
from ..errors import ArtifactImportError
from ..model import ArtifactFile, FileResult, ResolvedArtifact
from ..paths import PARTIAL_DIR, incomplete_path
from ..storages.base import AbstractStorage, PendingWrite
from ..verifiers.base import Verifier
from .jsonfile import read_json
from .manifest import EntryParser, ResultLines, manifest_files

log = logging.getLogger(__name__)

RECORD_PATH = f"{PARTIAL_DIR}/record.json"


def parked_path(path: str) -> str:
    return f"{PARTIAL_DIR}/files/{path}"


@attrs.frozen
class Adopted:
    """What an earlier, interrupted import of the same commit left for this one."""

    #: Pending writes of the complete files, and their results.
    writes: tuple[PendingWrite, ...] = ()
    results: Mapping[str, FileResult] = attrs.field(factory=dict)
    #: Files whose first bytes are parked: resumed from where they stopped.
    incomplete: frozenset[str] = frozenset()
    #: Whether a record of parked files was there at all (to remove it at the end).
    found: bool = False


async def park_verified(
    storage: AbstractStorage,
    artifact: ResolvedArtifact,
    pending: Sequence[PendingWrite],
    verified: Mapping[str, FileResult],
    incomplete: Sequence[str] = (),
) -> int:
    """Park every pending write of a verified file; abort the others; record them and the
    ``incomplete`` files already parked. Return how many complete files were parked."""
    kept: list[FileResult] = []
    # Where they are if the storage can (a directory: at their journal location, see adopt_parked), else
    # moved into the partial folder, all at once (a directory: renames folder by folder).
    done = [write for write in pending if write.path in verified]
    in_place = await storage.keep_in_place(done)
    parked = {id(write) for write, ok in zip(done, in_place, strict=True) if ok}
    parks = [(write, parked_path(write.path)) for write, ok in zip(done, in_place, strict=True) if not ok]
    parked |= {id(write) for (write, _), ok in zip(parks, await storage.park_writes(parks), strict=True) if ok}
    for write in pending:
        if id(write) in parked:
            kept.append(verified[write.path])
            continue
        await run_to_completion(write.abort())
    if not kept and not incomplete:
        return 0
    try:
        await write_record(storage, artifact, kept, incomplete)
    except ArtifactImportError:
        log.warning("%s: could not record the parked files; removing them", storage.describe(), exc_info=True)
        await discard_parked(storage)
        return 0
    return len(kept)


async def write_record(
    storage: AbstractStorage, artifact: ResolvedArtifact, kept: Sequence[FileResult], incomplete: Sequence[str]
) -> None:
    """Record what the partial folder holds for ``artifact``: ``kept`` verified files, and the files whose
    bytes may be (or are being) received under their incomplete names.

    Written before the first byte of an import moves, so that a process killed at any point leaves a record
    the next import can act on (adopt, or remove); rewritten when an interruption parks files."""
    head = json.dumps({"source": artifact.source, "commit": artifact.commit})[:-1]

    async def chunks() -> AsyncIterator[bytes]:
        # A thousand entries at a time, one a line: an import of 200,000 files cut short records them all, and
        # must stop within seconds, without the whole record in memory at once.
        yield (head + ',\n "incomplete": ' + json.dumps(sorted(incomplete)) + ',\n "files": [').encode()
        ordered = sorted(kept, key=lambda r: r.path)
        line = ResultLines()
        for at in range(0, len(ordered), 1000):
            lines = ",\n  ".join(line(r) for r in ordered[at : at + 1000])
            yield (("," if at else "") + "\n  " + lines).encode()
        yield b"\n ]}\n"

    await storage.stream_upload(RECORD_PATH, chunks())


async def _read_record(storage: AbstractStorage) -> dict[str, Any] | None:
    try:
        record = await read_json(storage, RECORD_PATH, entry=EntryParser())
    except (ArtifactImportError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@attrs.frozen
class Adoptable:
    """What the record of an interrupted import offers an import of ``artifact`` (nothing changed yet)."""

    #: Whether there is a record at all, and whether it is of the same source and commit (else it is discarded).
    found: bool = False
    same_version: bool = False
    #: Verified files kept whole that this import can take as they are, by path.
    complete: Mapping[str, FileResult] = attrs.field(factory=dict)
    #: Files the record says were being received (in part, or about to be: it is written first), to go on from
    #: unless taken whole.
    incomplete: frozenset[str] = frozenset()


async def adoptable(
    storage: AbstractStorage,
    artifact: ResolvedArtifact,
    todo: Sequence[ArtifactFile],
    verifiers: Sequence[Verifier],
) -> Adoptable:
    """What an earlier, interrupted import of the same commit parked for ``todo``, as its record says: a parked
    file is taken only if its record has an ok verdict from every verifier of this run and the listed size."""
    record = await _read_record(storage)
    if record is None:
        return Adoptable()
    if record.get("source") != artifact.source or record.get("commit") != artifact.commit:
        return Adoptable(found=True)
    entries = manifest_files(record)
    complete: dict[str, FileResult] = {}
    for file in todo:
        entry = entries.get(file.path)
        if entry is None or entry.size != file.size:
            continue
        required = {v.name for v in verifiers if v.applies_to(file)}
        if required <= {v.verifier for v in entry.kept_verdicts if v.ok}:
            complete[file.path] = entry
    listed = record.get("incomplete")
    wanted = {str(p) for p in listed} if isinstance(listed, list) else set()
    return Adoptable(True, True, complete, frozenset(f.path for f in todo if f.path in wanted))


async def adopt_parked(
    storage: AbstractStorage,
    artifact: ResolvedArtifact,
    todo: Sequence[ArtifactFile],
    verifiers: Sequence[Verifier],
) -> Adopted:
    """What an earlier, interrupted import of the same commit parked, ready for this one (see
    :func:`adoptable`); parked files of another commit are discarded."""
    offered = await adoptable(storage, artifact, todo, verifiers)
    if not offered.found:
        return Adopted()
    if not offered.same_version:
        await discard_parked(storage)
        return Adopted()
    adopted: list[PendingWrite] = []
    results: dict[str, FileResult] = {}
    sizes = {f.path: f.size for f in todo}
    # All at once: a directory looks a folder at a time (a look per file was slower than fetching them again).
    paths = list(offered.complete)
    writes = await storage.adopt_many([(parked_path(path), path) for path in paths])
    unsure: set[str] = set()
    if storage.journals_writes:
        # Verified files kept where they were received (Storage.keep_in_place): taken whole only if unchanged
        # since (the stamp the record gives: size, mtime, inode); otherwise read again, as a file received in
        # part is (Journal.resume_incomplete), never taken on the record's word.
        left = [at for at, write in enumerate(writes) if write is None]
        found = await storage.adopt_many([(incomplete_path(paths[at]), paths[at]) for at in left])
        for at, write in zip(left, found, strict=True):
            entry = offered.complete[paths[at]]
            if write is not None and (entry.stamp is None or write.stamp != entry.stamp):
                unsure.add(paths[at])
                continue
            writes[at] = write
    for path, write in zip(paths, writes, strict=True):
        if write is None or write.bytes_written != sizes[path]:
            if write is not None:
                await write.park(parked_path(path))
                unsure.add(path)
            continue
        entry = offered.complete[path]
        # Held until the commit, 100,000 of them when a large import resumes: the listing's path and size and
        # the record's stamp, one object each, not the equal copies the record and the stat made.
        write.bytes_written = sizes[path] or 0
        if write.stamp == entry.stamp:
            write.stamp = entry.stamp
        adopted.append(write)
        results[path] = attrs.evolve(entry, path=path, resumed=True)
    incomplete = (offered.incomplete | unsure) - results.keys()
    if storage.journals_writes:
        # Its record lists every file the interrupted import was about to receive (see write_record): only
        # those it received bytes of are worth a look each (Journal.resume_incomplete) by this one.
        listed = sorted(incomplete)
        held = await storage.file_infos([incomplete_path(path) for path in listed])
        incomplete = frozenset(path for path in listed if (i := held.get(incomplete_path(path))) and i.size > 0)
    return Adopted(tuple(adopted), results, incomplete, True)


@attrs.frozen
class ParkedSummary:
    source: str
    commit: str
    #: Verified files kept whole, and files received in part (or about to be: the record is written first).
    files: tuple[str, ...]
    incomplete: tuple[str, ...]


async def parked_summary(storage: AbstractStorage) -> ParkedSummary | None:
    """What an interrupted import left in the partial folder for the next import, as its record says."""
    record = await _read_record(storage)
    if record is None:
        return None
    listed = record.get("incomplete")
    return ParkedSummary(
        source=str(record.get("source", "")),
        commit=str(record.get("commit", "")),
        files=tuple(sorted(manifest_files(record))),
        incomplete=tuple(sorted(str(p) for p in listed)) if isinstance(listed, list) else (),
    )


async def discard_parked(storage: AbstractStorage) -> None:
    try:
        await storage.delete_folder(PARTIAL_DIR)
    except ArtifactImportError:
        log.warning("%s: could not remove %s", storage.describe(), PARTIAL_DIR, exc_info=True)
