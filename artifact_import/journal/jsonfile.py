"""The small JSON files the journal keeps in a destination: read bounded, written whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..errors import StorageFileNotFoundError
from ..storages.base import AbstractStorage
from ..streams import one_chunk

#: A file of the library's own read whole (an earlier version's indented manifest) larger than this is not
#: trusted, nor read into memory.
MAX_JSON_BYTES = 64 << 20
#: The manifest and the record of parked files list one file a line (see :class:`.manifest.ManifestChunks`):
#: read line by line, never whole, so a repository of 200,000 files (a manifest of 150 MB) is no reason to
#: distrust them. Their lines, and the whole, are still bounded.
MAX_LINE_BYTES = 64 << 20
MAX_LISTED_BYTES = 4 << 30
#: The lists written one entry a line: the files of a manifest or record, the renames of a commit intent (a
#: commit of 200,000 files names 400,000 paths; at some 700,000 files its intent passed the whole-read bound,
#: and the next import then ignored it).
_OPENS = {b'"files": [': "files", b'"renames": [': "renames"}


class _NotLined(Exception):
    """The file lists its files over several lines each (an earlier version's indented manifest): read it whole."""


async def read_json(storage: AbstractStorage, path: str, *, entry: Callable[[Any], Any] | None = None) -> Any:
    """The parsed JSON of a file the library wrote at ``path``; ``None`` if there is none.

    ``entry`` makes each entry of its one-a-line list (``files``, ``renames``) into what is kept of it, as
    each is read: the parsed entries of 200,000 files are not all held at once beside what they are made into.

    Raises ``ValueError`` if it is too large or not JSON, and the storage's
    error if it cannot be read.
    """
    try:
        return await _read_lined(storage, path, entry)
    except _NotLined:
        pass
    except StorageFileNotFoundError:
        return None
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in storage.stream_download(path):
            size += len(chunk)
            if size > MAX_JSON_BYTES:
                raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
            chunks.append(chunk)
    except StorageFileNotFoundError:
        return None
    document = json.loads(b"".join(chunks))
    if entry is not None and isinstance(document, dict):
        for key in _OPENS.values():
            if isinstance(document.get(key), list):
                document[key] = [entry(item) for item in document[key]]
    return document


async def _read_lined(storage: AbstractStorage, path: str, entry: Callable[[Any], Any] | None = None) -> Any:
    """A document whose ``"files"`` (or ``"renames"``) list holds one entry a line, parsed an entry at a time
    (each made into what ``entry`` makes of it): the text around the list is parsed as a document of its own,
    the entries one by one. A document without such a list is parsed whole, from the same read (at most
    :data:`MAX_JSON_BYTES`)."""
    outer: list[bytes] = []
    files: list[Any] = []
    key = ""
    state = "head"  # head | files | tail
    size = 0
    pending = bytearray()

    def line_of(raw: bytes) -> None:
        nonlocal state, key
        if state == "files":
            line = raw.strip().rstrip(b",")
            if line.startswith(b"]"):
                outer.append(raw)
                state = "tail"
            elif line:
                try:
                    parsed = json.loads(line)
                except ValueError:
                    raise _NotLined from None
                files.append(entry(parsed) if entry is not None else parsed)
            return
        outer.append(raw)
        if state == "head":
            end = raw.rstrip()
            for opening, name in _OPENS.items():
                if end.endswith(opening):
                    state, key = "files", name
                    break

    async for chunk in storage.stream_download(path):
        size += len(chunk)
        if size > MAX_LISTED_BYTES:
            raise ValueError(f"larger than {MAX_LISTED_BYTES} bytes")
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            line_of(bytes(pending[start:end]))
            start = end + 1
        del pending[:start]
        if state == "head" and size > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes")
        if len(pending) > MAX_LINE_BYTES:
            raise ValueError(f"a line longer than {MAX_LINE_BYTES} bytes")
    if pending:
        line_of(bytes(pending))
    document = json.loads(b"\n".join(outer))
    if key and isinstance(document, dict) and document.get(key) == []:
        document[key] = files
    return document


async def write_json(storage: AbstractStorage, path: str, body: Any, *, indent: int | None = None) -> None:
    """Write ``body`` as JSON at ``path``; it appears whole or not at all."""
    await storage.stream_upload(path, one_chunk(json.dumps(body, indent=indent).encode()))
