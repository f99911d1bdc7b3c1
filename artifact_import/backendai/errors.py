"""The storage proxy's errors as ours (what its volumes raise), and ours as its (what its route expects)."""

from __future__ import annotations

import errno

from ai.backend.common.exception import BackendAIError
from ai.backend.storage.errors import (
    ArtifactVerificationFailedError,
    FileStreamUploadError,
    HuggingFaceAPIError,
    HuggingFaceModelNotFoundError,
    InvalidAPIParameters,
    InvalidPathError,
    InvalidQuotaScopeError,
    InvalidSubpathError,
    InvalidVolumeError,
    QuotaScopeNotFoundError,
)
from ai.backend.storage.errors import (
    VFolderNotFoundError as TheirVFolderNotFoundError,
)
from ai.backend.storage.errors.common import InvalidStorageTargetError

from ..errors import (
    ArtifactImportError,
    ConfigError,
    QuotaExceededError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SourceError,
    StorageError,
    StorageNotFoundError,
    UnsafePathError,
    VerificationError,
    VFolderNotFoundError,
)

#: A write failed because the filesystem (or the quota the filesystem enforces) is full.
FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def their_message(exc: BaseException) -> str:
    """What one of their errors says, without the RFC 7807 title around it."""
    if isinstance(exc, BackendAIError) and exc.extra_msg:
        return exc.extra_msg
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def from_theirs(exc: BaseException, where: str, path: str | None = None) -> ArtifactImportError:
    """``exc`` (raised by one of their volumes while working on ``path`` of ``where``) as one of ours."""
    subject = f"{path}: " if path else ""
    if isinstance(exc, ArtifactImportError):
        return exc
    if isinstance(exc, OSError) and exc.errno in FULL:
        return QuotaExceededError(
            f"{subject}{where} is full ({exc.strerror}): the import was aborted and nothing of it was kept. "
            "Free space in the vfolder's quota scope, or raise its quota, then import again.",
            path=path,
        )
    if isinstance(exc, InvalidSubpathError):
        return UnsafePathError([(path or "", f"leaves {where}")])
    if isinstance(exc, TheirVFolderNotFoundError | QuotaScopeNotFoundError):
        return VFolderNotFoundError(f"{subject}{where} does not exist; create it first", path=path)
    if isinstance(exc, InvalidQuotaScopeError):
        return ConfigError(f"{subject}{where}: {their_message(exc)}", path=path)
    return StorageError(f"{subject}{where}: {their_message(exc)}", path=path)


def to_theirs(exc: ArtifactImportError) -> BackendAIError:
    """The error the proxy's route and service raise for what ``exc`` says (its message kept, credential-free
    as every message of ours)."""
    message = exc.message
    if isinstance(exc, VerificationError):
        return ArtifactVerificationFailedError(message)
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
        return HuggingFaceModelNotFoundError(message)
    if isinstance(exc, SourceError):
        return HuggingFaceAPIError(message)
    if isinstance(exc, UnsafePathError):
        return InvalidPathError(message)
    if isinstance(exc, VFolderNotFoundError):
        return InvalidVolumeError(message)
    if isinstance(exc, StorageNotFoundError):
        return InvalidStorageTargetError(message)
    if isinstance(exc, ConfigError):
        return InvalidAPIParameters(extra_msg=message)
    return FileStreamUploadError(message)
