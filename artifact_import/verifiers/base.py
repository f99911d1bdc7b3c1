"""The verifier interface: fed the bytes of a file as they pass, then asked for a verdict."""

from __future__ import annotations

import abc

from ..model import ArtifactFile, Verdict


class VerifierSession(abc.ABC):
    """One verifier looking at one file."""

    @abc.abstractmethod
    async def feed(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    async def finish(self) -> Verdict:
        """Called once after the last chunk; a failed verdict stops the file being archived."""

    async def cancel(self) -> None:  # noqa: B027 - optional hook; most sessions hold nothing
        """Release what the session holds when the file is abandoned before ``finish``."""


class Verifier(abc.ABC):
    name: str

    def applies_to(self, file: ArtifactFile) -> bool:
        return True

    @abc.abstractmethod
    def start(self, file: ArtifactFile) -> VerifierSession: ...
