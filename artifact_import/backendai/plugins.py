"""artifact-import as plugins of the storage proxy.

Entry points (``pyproject.toml``)::

    [project.entry-points.backendai_storage_artifact_verifier_v1]
    artifact-import = "artifact_import.backendai.plugins:ArtifactImportVerifierPlugin"

The verifier plugin gives the proxy's own pipeline our verifiers (safetensors
headers, pickle imports, Keras/ONNX/GGUF checks, ClamAV when configured):
its VERIFY step hands the plugin a folder, which the plugin reads file by file
through every verifier. Settings are those of :mod:`.settings`
(``ARTIFACT_IMPORT_CONFIG``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ai.backend.storage.data.storage.types import ImportStepContext as TheirContext
from ai.backend.storage.plugin import AbstractArtifactVerifierPlugin, VerifierPluginResult

from ..errors import VerificationError
from ..model import ArtifactFile, Verdict
from ..redact import redact_text
from ..storages.vfs import VFSStorage
from ..verifiers import build_verifiers
from ..verifiers.base import Verifier
from .settings import current

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


class ArtifactImportVerifierPlugin(AbstractArtifactVerifierPlugin):
    """Our verifiers as one of the proxy's artifact verifiers: a file any of them refuses counts as infected."""

    # Its settings are read from our config file, not from etcd: nothing to watch.
    config_watch_enabled = False

    def __init__(self, plugin_config: Mapping[str, Any], local_config: Mapping[str, Any]) -> None:
        super().__init__(plugin_config, local_config)
        self.verifiers: Sequence[Verifier] = ()

    async def init(self, context: Any | None = None) -> None:
        self.verifiers = build_verifiers(current().verify)

    async def cleanup(self) -> None:
        pass

    async def update_plugin_config(self, plugin_config: Mapping[str, Any]) -> None:
        self.plugin_config = plugin_config

    async def verify(self, artifact_path: Path, context: TheirContext) -> VerifierPluginResult:
        """Every file under ``artifact_path`` through every verifier; a folder that is not there fails (an
        import whose files are elsewhere has not been verified, and must not pass as if it had)."""
        if not await asyncio.to_thread(artifact_path.is_dir):
            raise VerificationError(f"{artifact_path}: no such folder, so nothing of the artifact could be verified")
        scanned = 0
        refused: dict[str, str] = {}
        async for info in VFSStorage("artifact", artifact_path, fsync=False).list_files():
            verdicts = await self._verify_file(artifact_path / info.path, ArtifactFile(info.path, info.size))
            scanned += 1
            failed = [v for v in verdicts if not v.ok]
            if failed:
                refused[info.path] = redact_text("; ".join(f"{v.verifier}: {v.detail}" for v in failed))
                log.warning("%s: refused (%s)", info.path, refused[info.path])
        return VerifierPluginResult(scanned_count=scanned, infected_count=len(refused), metadata=refused)

    async def _verify_file(self, path: Path, file: ArtifactFile) -> list[Verdict]:
        sessions = [v.start(file) for v in self.verifiers if v.applies_to(file)]
        if not sessions:
            return []
        handle = await asyncio.to_thread(open, path, "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, _CHUNK):
                await asyncio.gather(*(s.feed(chunk) for s in sessions))
            return [await s.finish() for s in sessions]
        except BaseException:
            for session in sessions:
                await session.cancel()
            raise
        finally:
            await asyncio.to_thread(handle.close)
