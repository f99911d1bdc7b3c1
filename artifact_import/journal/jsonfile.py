"""The small JSON files the journal keeps in a destination: read bounded, written whole."""

from __future__ import annotations

import json
from typing import Any

from ..errors import StorageFileNotFoundError
from ..storages.base import AbstractStorage
from ..streams import one_chunk

#: A file of the library's own (manifest, record) larger than this is not trusted, nor read into memory.
MAX_JSON_BYTES = 64 << 20


async def read_json(storage: AbstractStorage, path: str) -> Any:
    """The parsed JSON of a small file the library wrote at ``path``; ``None`` if there is none.

    Raises ``ValueError`` if it is too large or not JSON, and the storage's
    error if it cannot be read.
    """
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
    return json.loads(b"".join(chunks))


async def write_json(storage: AbstractStorage, path: str, body: Any, *, indent: int | None = None) -> None:
    """Write ``body`` as JSON at ``path``; it appears whole or not at all."""
    await storage.stream_upload(path, one_chunk(json.dumps(body, indent=indent).encode()))
