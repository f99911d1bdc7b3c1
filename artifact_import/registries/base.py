"""What a source of artifacts implements."""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator

from ..model import ArtifactFile, ModelTarget, ResolvedArtifact


class AbstractRegistry(abc.ABC):
    """Lists an artifact's files at an immutable version and streams their bytes."""

    name: str
    #: The ``ModelTarget.scheme`` of what it serves ("hf", "s3").
    scheme: str = "hf"

    @abc.abstractmethod
    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        """Pin ``model.revision`` to an immutable id and list the selected files."""

    @abc.abstractmethod
    def open(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        """The bytes of ``file`` at ``artifact.commit`` from byte ``offset``, as bounded chunks.

        Transient failures are retried and resumed inside; the caller sees one
        continuous stream or an error.
        """

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
