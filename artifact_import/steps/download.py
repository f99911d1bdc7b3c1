"""DOWNLOAD: pin the source to an immutable version, list it, stream each file."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..errors import FileNotInSourceError, SourceError
from ..model import ArtifactFile, ArtifactStorageImportStep, ModelTarget, ResolvedArtifact
from ..registries.base import AbstractRegistry
from ..streams import read_ahead


class DownloadStep:
    step_type = ArtifactStorageImportStep.DOWNLOAD

    def __init__(self, registry: AbstractRegistry, *, read_ahead_depth: int = 4) -> None:
        self.registry = registry
        self.read_ahead_depth = read_ahead_depth

    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        artifact = await self.registry.resolve(model)
        listed = {f.path for f in artifact.files}
        missing = [path for path in model.files if path not in listed]
        if missing:
            names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotInSourceError(
                f"{model.uri}: not in the source: {names}. File names are paths in the repository, "
                f"e.g. config.json or onnx/model.onnx; see them with `artifact-import ls {model.uri}`",
                path=missing[0],
            )
        if not any(model.chosen(f.path) for f in artifact.files):
            filters = " with the given --include/--exclude patterns" if model.include or model.exclude else ""
            raise SourceError(f"{model.uri}: no files to import{filters}")
        return artifact

    def stream(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        # Reading ahead lets the network keep receiving while the previous
        # chunks are hashed and written; the depth bounds the memory it costs.
        return read_ahead(self.registry.open(artifact, file, offset), self.read_ahead_depth)
