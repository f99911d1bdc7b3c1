"""artifact-import: import ML model artifacts, streamed, verified, never half-done."""

from __future__ import annotations

__version__ = "0.1.0"

from .api import import_artifact
from .context import ImportStepContext, StorageTarget
from .errors import (
    AccessDeniedError,
    ArtifactImportError,
    ConfigError,
    DownloadError,
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
from .manifest import MANIFEST_PATH
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
from .registries.base import AbstractRegistry
from .registries.http import HttpTimeouts, RetryPolicy
from .registries.huggingface import HuggingFaceRegistry
from .s3 import S3Credentials, S3Endpoint
from .service import ImportService, ImportTask, TaskState
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
    "FileResult",
    "FileState",
    "GgufVerifier",
    "HttpTimeouts",
    "HubScanVerifier",
    "HuggingFaceRegistry",
    "ImportPipeline",
    "ImportResult",
    "ImportService",
    "ImportStepContext",
    "ImportTask",
    "IntegrityError",
    "KerasVerifier",
    "ModelTarget",
    "ObjectStorage",
    "ObjectVolume",
    "OnnxVerifier",
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
