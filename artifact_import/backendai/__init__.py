"""artifact-import inside the Backend.AI storage proxy (``backend-ai-storage-proxy`` 26.9.6, Python 3.13).

Install with the extra ``backendai`` in the proxy's environment. Then:

- :func:`create_huggingface_import_pipeline` is a drop-in for the proxy's own
  factory: its Hugging Face route, with this factory in its place, imports
  through artifact-import (parallel, verified, all-or-nothing);
- :class:`BackendAIVolume` makes any of its volumes one of ours;
- the plugins in :mod:`.plugins` give its own pipeline our verifiers and mount
  our routes in it.

Only this package imports ``ai.backend``; the rest of artifact-import never
imports this package.
"""

from __future__ import annotations

from .pipeline import HuggingFaceImportPipeline, create_huggingface_import_pipeline
from .settings import BridgeSettings, configure
from .storage import BridgedVFolderStorage, StorageResolver, volume_of
from .volume import BackendAIVolume

__all__ = [
    "BackendAIVolume",
    "BridgeSettings",
    "BridgedVFolderStorage",
    "HuggingFaceImportPipeline",
    "StorageResolver",
    "configure",
    "create_huggingface_import_pipeline",
    "volume_of",
]
