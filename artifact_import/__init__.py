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
from .storages.base import AbstractStorage, AbstractStoragePool, FileInfo, PendingWrite, StoragePool
from .storages.object import ObjectStorage
from .storages.vfs import VFSStorage
from .verifiers import build_verifiers
from .verifiers.base import Verifier, VerifierSession
from .verifiers.checksum import ChecksumVerifier
from .verifiers.clamav import ClamAVVerifier
from .verifiers.pickle import PicklePolicy, PickleVerifier
from .verifiers.safetensors import SafetensorsVerifier

__all__ = [
    "MANIFEST_PATH",
    "AbstractRegistry",
    "AbstractStorage",
    "AbstractStoragePool",
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
    "HttpTimeouts",
    "HuggingFaceRegistry",
    "ImportPipeline",
    "ImportResult",
    "ImportStepContext",
    "IntegrityError",
    "ModelTarget",
    "ObjectStorage",
    "PendingWrite",
    "PicklePolicy",
    "PickleVerifier",
    "ProgressCallback",
    "ProgressEvent",
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
    "UnsafeContentError",
    "UnsafePathError",
    "VFSStorage",
    "Verdict",
    "VerificationError",
    "Verifier",
    "VerifierSession",
    "__version__",
    "build_verifiers",
    "import_artifact",
]
