"""The commit of an import, made to survive a crash half way: recorded first, rolled forward after.

Files become visible by renames, one at a time; a process killed among them
would leave some visible and no manifest vouching for them, or a mix of two
revisions under the old manifest. So before the first rename the import
writes its *intent*: the new manifest and every rename it is about to do.
Everything named there is verified already, so whoever finds an intent (the
next import, or ``verify``) completes it: the renames not yet done, then the
manifest, then the intent goes. A commit that fails while the process lives
removes its intent and cleans up as before.

Only storages whose writes are journaled in place (a directory) need this:
their pending files sit under names the intent can point at.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence

from .._aio import run_to_completion
from ..errors import ArtifactImportError
from ..paths import PARTIAL_DIR, RESERVED_DIR, incomplete_path
from ..storages.base import AbstractStorage, PendingWrite
from ..streams import one_chunk
from .jsonfile import read_json
from .manifest import MANIFEST_PATH

log = logging.getLogger(__name__)

INTENT_PATH = f"{RESERVED_DIR}/commit.json"
#: In place of a journal location that is the one the write's path gives (see commit).
_DERIVED = "\0derived"


async def commit(
    storage: AbstractStorage,
    pending: Sequence[PendingWrite],
    manifest: Iterable[bytes],
    *,
    before_manifest: Callable[[], Awaitable[None]] | None = None,
    on_recorded: Callable[[], None] | None = None,
) -> None:
    """Make every pending write visible, then ``manifest`` (the manifest's bytes in chunks, the same bytes each
    time it is iterated) that vouches for them.

    The manifest's bytes are written first, so that a destination that
    cannot take them (full, gone) fails the import before any file is
    visible; it is committed last, so that a destination with a manifest
    holds every file it lists. Where a commit is a series of moves, the moves
    and the manifest are recorded first: a process killed among them is
    completed by whoever comes next, never left half visible. So is one
    interrupted (cancelled, Ctrl-C, SIGTERM) once they are recorded: it stops
    at once and leaves the record (``on_recorded`` was called), rather than
    undo or finish a commit of many files before it can exit.
    ``before_manifest`` runs once every file is committed
    (:meth:`AbstractStorage.publish`); if it fails, the manifest is not committed.
    """
    written = await storage.open_write(MANIFEST_PATH)
    try:
        for chunk in manifest:
            await written.write(chunk)
        await written.flush()
    except BaseException:
        await run_to_completion(written.abort())
        raise
    journaled = recorded = False
    try:
        # A write whose journal location is the one its path gives (a directory's) is not kept by name: at
        # 200,000 files these names, and pairs of them, were some 40 MB of the commit's peak.
        journals: list[str | None] = []
        for write in pending:
            journal = await write.prepare_commit()
            journals.append(_DERIVED if journal == incomplete_path(write.path) else journal)
        manifest_journal = await written.prepare_commit()
        journaled = bool(pending) and all(j is not None for j in journals)
        if journaled:
            renames = (
                (incomplete_path(w.path) if j is _DERIVED else str(j), w.path)
                for j, w in zip(journals, pending, strict=True)
            )
            if manifest_journal is not None:
                # The manifest's bytes wait under a journal name of their own: its move is the last one.
                await record_intent(storage, itertools.chain(renames, [(str(manifest_journal), MANIFEST_PATH)]))
            else:
                await record_intent(storage, renames, b"".join(manifest))
            recorded = True
            if on_recorded is not None:
                on_recorded()
        await storage.commit_writes(pending)
        if before_manifest is not None:
            await before_manifest()
        await written.commit()
    except (asyncio.CancelledError, KeyboardInterrupt):
        if not recorded:
            await run_to_completion(written.abort())
        raise
    except BaseException:
        await run_to_completion(written.abort())
        if journaled:
            await run_to_completion(drop_intent(storage))
        raise
    if journaled:
        await drop_intent(storage)


async def record_intent(
    storage: AbstractStorage, renames: Iterable[tuple[str, str]], manifest: bytes | None = None
) -> None:
    """The renames of a commit, written a thousand at a time (a commit of 200,000 files names 400,000 paths),
    and the manifest's text where the manifest is not itself one of them."""

    async def chunks() -> AsyncIterator[bytes]:
        if manifest is not None:
            yield b'{"manifest": ' + json.dumps(manifest.decode()).encode() + b", "
        else:
            yield b"{"
        yield b'"renames": ['
        pending = iter(renames)
        first = True
        while batch := list(itertools.islice(pending, 1000)):
            pairs = ",\n".join(json.dumps(list(pair)) for pair in batch)
            yield (("" if first else ",") + "\n" + pairs).encode()
            first = False
        yield b"\n]}\n"

    await storage.stream_upload(INTENT_PATH, chunks())


async def drop_intent(storage: AbstractStorage) -> None:
    try:
        await storage.delete_file(INTENT_PATH)
    except ArtifactImportError:
        log.warning("%s: could not remove %s", storage.describe(), INTENT_PATH, exc_info=True)


async def read_intent(storage: AbstractStorage) -> object:
    """The intent a killed import left (None if there is none)."""
    try:
        return await read_json(storage, INTENT_PATH)
    except (ArtifactImportError, ValueError):
        return None


async def finish_interrupted_commit(storage: AbstractStorage) -> bool:
    """Complete a commit a killed import left half done; True if there was one."""
    intent = await read_intent(storage)
    if intent is None:
        return False
    renames = intent.get("renames") if isinstance(intent, dict) else None
    # Intents of earlier versions carry the manifest's text; now its move is the last rename.
    manifest = intent.get("manifest") if isinstance(intent, dict) else None
    if not isinstance(renames, list) or not isinstance(manifest, str | None):
        log.warning("%s: %s is unreadable; ignored", storage.describe(), INTENT_PATH)
        await drop_intent(storage)
        return False
    # All at once, in order: a directory renames them folder by folder (see VFSStorage.move_many).
    moved = await storage.move_many(
        [(str(pair[0]), str(pair[1])) for pair in renames if isinstance(pair, list) and len(pair) == 2]
    )
    if manifest is not None:
        await storage.stream_upload(MANIFEST_PATH, one_chunk(manifest.encode()))
    # The commit took every file the import had; what its partial folder still holds is stale.
    try:
        await storage.delete_folder(PARTIAL_DIR)
    except ArtifactImportError:
        log.warning("%s: could not remove %s", storage.describe(), PARTIAL_DIR, exc_info=True)
    await drop_intent(storage)
    log.warning(
        "%s: completed the commit an interrupted import had started (%d of %d file(s) still to move)",
        storage.describe(),
        moved,
        len(renames),
    )
    return True
