"""artifact-import: import ML model artifacts, streamed, verified, never half-done.

Names are imported on first use (PEP 562): ``artifact-import --version`` or a
command that needs only a directory does not pay for aiohttp, minio,
huggingface_hub and the verifiers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .api import import_artifact
    from .context import ImportStepContext, StorageTarget
    from .errors import (
        AccessDeniedError,
        ArtifactImportError,
        ConfigError,
        DownloadError,
        FileNotInSourceError,
        InsufficientSpaceError,
        IntegrityError,
        QuotaExceededError,
        ReadOnlyStorageError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
        ScannerError,
        SourceError,
        StorageError,
        StorageFileNotFoundError,
        StorageNotFoundError,
        UnsafeContentError,
        UnsafePathError,
        VerificationError,
        VFolderNotFoundError,
    )
    from .journal import MANIFEST_PATH
    from .model import (
        ArtifactFile,
        ArtifactStorageImportStep,
        FileResult,
        FileState,
        ImportResult,
        ModelTarget,
        ProgressEvent,
        ResolvedArtifact,
        Verdict,
    )
    from .pipeline import ImportPipeline, ProgressCallback
    from .proxy.fleet import FleetImportService
    from .proxy.service import ImportService, ImportTask, TaskState
    from .registries.base import AbstractRegistry
    from .registries.http import HttpTimeouts, RetryPolicy
    from .registries.huggingface import HuggingFaceRegistry
    from .registries.ranges import ParallelPolicy
    from .s3 import S3Credentials, S3Endpoint
    from .storages.base import AbstractStorage, AbstractStoragePool, FileInfo, PendingWrite, StoragePool
    from .storages.object import ObjectStorage
    from .storages.vfs import VFSStorage
    from .storages.volume import VolumeStorageAdapter
    from .verifiers import build_verifiers
    from .verifiers.base import Verifier, VerifierSession
    from .verifiers.checksum import ChecksumVerifier
    from .verifiers.clamav import ClamAVVerifier
    from .verifiers.gguf import GgufVerifier
    from .verifiers.hubscan import HubScanVerifier
    from .verifiers.keras import KerasVerifier
    from .verifiers.onnx import OnnxVerifier
    from .verifiers.pickle import PicklePolicy, PickleVerifier
    from .verifiers.policy import Policy
    from .verifiers.safetensors import SafetensorsVerifier
    from .volumes.base import AbstractVolume, VFolderID, VFolderRef, VolumePool
    from .volumes.object import ObjectVolume
    from .volumes.quota import QuotaUsage
    from .volumes.vfs import VFSVolume

_LAZY: dict[str, str] = {
    "AbstractRegistry": ".registries.base",
    "AbstractStorage": ".storages.base",
    "AbstractStoragePool": ".storages.base",
    "AbstractVolume": ".volumes.base",
    "AccessDeniedError": ".errors",
    "ArtifactFile": ".model",
    "ArtifactImportError": ".errors",
    "ArtifactStorageImportStep": ".model",
    "ChecksumVerifier": ".verifiers.checksum",
    "ClamAVVerifier": ".verifiers.clamav",
    "ConfigError": ".errors",
    "DownloadError": ".errors",
    "FileInfo": ".storages.base",
    "FileResult": ".model",
    "FileState": ".model",
    "GgufVerifier": ".verifiers.gguf",
    "HttpTimeouts": ".registries.http",
    "HubScanVerifier": ".verifiers.hubscan",
    "HuggingFaceRegistry": ".registries.huggingface",
    "ImportPipeline": ".pipeline",
    "ImportResult": ".model",
    "ImportService": ".proxy.service",
    "FleetImportService": ".proxy.fleet",
    "ImportStepContext": ".context",
    "FileNotInSourceError": ".errors",
    "ImportTask": ".proxy.service",
    "InsufficientSpaceError": ".errors",
    "IntegrityError": ".errors",
    "KerasVerifier": ".verifiers.keras",
    "MANIFEST_PATH": ".journal.manifest",
    "ModelTarget": ".model",
    "ObjectStorage": ".storages.object",
    "ObjectVolume": ".volumes.object",
    "OnnxVerifier": ".verifiers.onnx",
    "ParallelPolicy": ".registries.ranges",
    "PendingWrite": ".storages.base",
    "PicklePolicy": ".verifiers.pickle",
    "PickleVerifier": ".verifiers.pickle",
    "Policy": ".verifiers.policy",
    "ProgressCallback": ".pipeline",
    "ProgressEvent": ".model",
    "QuotaExceededError": ".errors",
    "QuotaUsage": ".volumes.quota",
    "ReadOnlyStorageError": ".errors",
    "RepositoryNotFoundError": ".errors",
    "ResolvedArtifact": ".model",
    "RetryPolicy": ".registries.http",
    "RevisionNotFoundError": ".errors",
    "S3Credentials": ".s3",
    "S3Endpoint": ".s3",
    "SafetensorsVerifier": ".verifiers.safetensors",
    "ScannerError": ".errors",
    "SourceError": ".errors",
    "StorageError": ".errors",
    "StorageFileNotFoundError": ".errors",
    "StorageNotFoundError": ".errors",
    "StoragePool": ".storages.base",
    "StorageTarget": ".context",
    "TaskState": ".proxy.service",
    "UnsafeContentError": ".errors",
    "UnsafePathError": ".errors",
    "VFSStorage": ".storages.vfs",
    "VFSVolume": ".volumes.vfs",
    "VFolderID": ".volumes.base",
    "VFolderNotFoundError": ".errors",
    "VFolderRef": ".volumes.base",
    "Verdict": ".model",
    "VerificationError": ".errors",
    "Verifier": ".verifiers.base",
    "VerifierSession": ".verifiers.base",
    "VolumePool": ".volumes.base",
    "VolumeStorageAdapter": ".storages.volume",
    "build_verifiers": ".verifiers",
    "import_artifact": ".api",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "MANIFEST_PATH",
    "AbstractRegistry",
    "AbstractStorage",
    "AbstractStoragePool",
    "AbstractVolume",
    "AccessDeniedError",
    "ArtifactFile",
    "ArtifactImportError",
    "ArtifactStorageImportStep",
    "ChecksumVerifier",
    "ClamAVVerifier",
    "ConfigError",
    "DownloadError",
    "FileInfo",
    "FileNotInSourceError",
    "FileResult",
    "FileState",
    "FleetImportService",
    "GgufVerifier",
    "HttpTimeouts",
    "HubScanVerifier",
    "HuggingFaceRegistry",
    "ImportPipeline",
    "ImportResult",
    "ImportService",
    "ImportStepContext",
    "ImportTask",
    "InsufficientSpaceError",
    "IntegrityError",
    "KerasVerifier",
    "ModelTarget",
    "ObjectStorage",
    "ObjectVolume",
    "OnnxVerifier",
    "ParallelPolicy",
    "PendingWrite",
    "PicklePolicy",
    "PickleVerifier",
    "Policy",
    "ProgressCallback",
    "ProgressEvent",
    "QuotaExceededError",
    "QuotaUsage",
    "ReadOnlyStorageError",
    "RepositoryNotFoundError",
    "ResolvedArtifact",
    "RetryPolicy",
    "RevisionNotFoundError",
    "S3Credentials",
    "S3Endpoint",
    "SafetensorsVerifier",
    "ScannerError",
    "SourceError",
    "StorageError",
    "StorageFileNotFoundError",
    "StorageNotFoundError",
    "StoragePool",
    "StorageTarget",
    "TaskState",
    "UnsafeContentError",
    "UnsafePathError",
    "VFSStorage",
    "VFSVolume",
    "VFolderID",
    "VFolderNotFoundError",
    "VFolderRef",
    "Verdict",
    "VerificationError",
    "Verifier",
    "VerifierSession",
    "VolumePool",
    "VolumeStorageAdapter",
    "__version__",
    "build_verifiers",
    "import_artifact",
]
