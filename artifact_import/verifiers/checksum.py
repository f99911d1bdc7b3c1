"""Integrity: the bytes must match the size and digest the source published."""

from __future__ import annotations

import hashlib
from typing import Any

from ..model import CHECKSUM, ArtifactFile, Verdict
from ..streams import DigestWorker, git_blob_prefix
from .base import Verifier, VerifierSession


class ChecksumVerifier(Verifier):
    """Always computes sha256 (the manifest records it); checks every digest the source gave.

    A file whose source published no digest at all passes on size only, and
    its verdict says so, rather than pretending it was checked.
    """

    name = CHECKSUM

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _ChecksumSession(file)


class _ChecksumSession(VerifierSession):
    def __init__(self, file: ArtifactFile) -> None:
        self._file = file
        self._sha256 = hashlib.sha256()
        # git's blob sha1 needs the size up front; it is only published with it.
        self._sha1 = (
            hashlib.sha1(git_blob_prefix(file.size)) if file.git_sha1 is not None and file.size is not None else None
        )
        self._md5 = hashlib.md5() if file.md5 is not None and file.sha256 is None else None
        # All of them in one thread, fed chunk after chunk (see DigestWorker).
        self._worker = DigestWorker([h for h in (self._sha256, self._sha1, self._md5) if h is not None])
        self._size = 0

    async def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        await self._worker.update(chunk)

    async def cancel(self) -> None:
        self._worker.close()

    async def finish(self) -> Verdict:
        file = self._file
        await self._worker.finish()
        sha256 = self._sha256.hexdigest()
        data = {"sha256": sha256, "size": self._size}
        if file.size is not None and self._size != file.size:
            return _verdict(False, f"size mismatch: expected {file.size} bytes, got {self._size}", data)
        if file.sha256 is not None:
            return _compare("sha256", file.sha256, sha256, data)
        if self._sha1 is not None and file.git_sha1 is not None:
            return _compare("git blob sha1", file.git_sha1, self._sha1.hexdigest(), data)
        if self._md5 is not None and file.md5 is not None:
            return _compare("md5", file.md5, self._md5.hexdigest(), data)
        return _verdict(True, "no digest published; size checked only", data)


def _verdict(ok: bool, detail: str, data: dict[str, Any]) -> Verdict:
    return Verdict(ChecksumVerifier.name, ok, detail, data)


#: One string each, not one per file.
_MATCHES = {kind: f"{kind} matches" for kind in ("sha256", "git blob sha1", "md5")}


def _compare(kind: str, expected: str, actual: str, data: dict[str, Any]) -> Verdict:
    if actual != expected.lower():
        return _verdict(False, f"{kind} mismatch: expected {expected}, got {actual}", data)
    return _verdict(True, _MATCHES[kind], data)
