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
    SourceError,
    StorageError,
    StorageFileNotFoundError,
    StorageNotFoundError,
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
from .verifiers.base import Verifier, VerifierSession
from .verifiers.checksum import ChecksumVerifier

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
    "ProgressCallback",
    "ProgressEvent",
    "ReadOnlyStorageError",
    "RepositoryNotFoundError",
    "ResolvedArtifact",
    "RetryPolicy",
    "RevisionNotFoundError",
    "S3Credentials",
    "S3Endpoint",
    "SourceError",
    "StorageError",
    "StorageFileNotFoundError",
    "StorageNotFoundError",
    "StoragePool",
    "StorageTarget",
    "UnsafePathError",
    "VFSStorage",
    "Verdict",
    "VerificationError",
    "Verifier",
    "VerifierSession",
    "__version__",
    "import_artifact",
]
