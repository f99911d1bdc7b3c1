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

import json
import logging
from collections.abc import Sequence

from .errors import ArtifactImportError
from .manifest import MANIFEST_PATH
from .paths import PARTIAL_DIR, RESERVED_DIR
from .reimport import read_json
from .storages.base import AbstractStorage
from .streams import one_chunk

log = logging.getLogger(__name__)

INTENT_PATH = f"{RESERVED_DIR}/commit.json"


async def record_intent(storage: AbstractStorage, renames: Sequence[tuple[str, str]], manifest: bytes) -> None:
    body = {"renames": [list(pair) for pair in renames], "manifest": manifest.decode()}
    await storage.stream_upload(INTENT_PATH, one_chunk(json.dumps(body).encode()))


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
    manifest = intent.get("manifest") if isinstance(intent, dict) else None
    if not isinstance(renames, list) or not isinstance(manifest, str):
        log.warning("%s: %s is unreadable; ignored", storage.describe(), INTENT_PATH)
        await drop_intent(storage)
        return False
    moved = 0
    for pair in renames:
        if isinstance(pair, list) and len(pair) == 2 and await storage.move(str(pair[0]), str(pair[1])):
            moved += 1
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
