"""Integrity: the bytes must match the size and digest the source published."""

from __future__ import annotations

from ..model import ArtifactFile, Verdict
from ..streams import Hasher, git_blob_prefix
from .base import Verifier, VerifierSession


class ChecksumVerifier(Verifier):
    """Always computes sha256 (the manifest records it); checks every digest the source gave.

    A file whose source published no digest at all passes on size only, and
    its verdict says so, rather than pretending it was checked.
    """

    name = "checksum"

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _ChecksumSession(file)


class _ChecksumSession(VerifierSession):
    def __init__(self, file: ArtifactFile) -> None:
        self._file = file
        self._sha256 = Hasher("sha256")
        # git's blob sha1 needs the size up front; it is only published with it.
        self._sha1 = (
            Hasher("sha1", git_blob_prefix(file.size)) if file.git_sha1 is not None and file.size is not None else None
        )
        self._size = 0

    async def feed(self, chunk: bytes) -> None:
        self._size += len(chunk)
        await self._sha256.update(chunk)
        if self._sha1 is not None:
            await self._sha1.update(chunk)

    async def finish(self) -> Verdict:
        file = self._file
        sha256 = self._sha256.hexdigest()
        data = {"sha256": sha256, "size": self._size}
        if file.size is not None and self._size != file.size:
            return Verdict(
                ChecksumVerifier.name,
                False,
                f"size mismatch: expected {file.size} bytes, got {self._size}",
                data,
            )
        if file.sha256 is not None:
            if sha256 != file.sha256.lower():
                return Verdict(
                    ChecksumVerifier.name,
                    False,
                    f"sha256 mismatch: expected {file.sha256}, got {sha256}",
                    data,
                )
            return Verdict(ChecksumVerifier.name, True, "sha256 matches", data)
        if self._sha1 is not None and file.git_sha1 is not None:
            git_sha1 = self._sha1.hexdigest()
            if git_sha1 != file.git_sha1.lower():
                return Verdict(
                    ChecksumVerifier.name,
                    False,
                    f"git blob sha1 mismatch: expected {file.git_sha1}, got {git_sha1}",
                    data,
                )
            return Verdict(ChecksumVerifier.name, True, "git blob sha1 matches", data)
        return Verdict(ChecksumVerifier.name, True, "no digest published; size checked only", data)
