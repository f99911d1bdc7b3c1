"""One exception hierarchy, rooted in :class:`ArtifactImportError`.

Each subclass is a failure a caller handles differently. Every message names
the file or the source it is about and says what to do; none carries a
credential, a signed URL or a query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Verdict

#: Longest run of non-blank characters a message keeps whole (a listing can name a file 5,000 characters long).
_WORD_MAX = 160
#: Offending names an UnsafePathError lists.
_LISTED = 10
_LONG_WORD = re.compile(rf"\S{{{_WORD_MAX + 1},}}")


def _clip_words(message: str) -> str:
    """``message`` with overlong names cut in the middle: their start and end say which one it is."""
    return _LONG_WORD.sub(lambda m: f"{m[0][:100]}…({len(m[0]) - 140} more)…{m[0][-40:]}", message)


class ArtifactImportError(Exception):
    """Base of every error this library raises on purpose."""

    #: Exit code of the CLI when this error ends an import.
    exit_code: int = 1

    def __init__(self, message: str, *, path: str | None = None) -> None:
        message = _clip_words(message)
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return self.message


class ConfigError(ArtifactImportError):
    """The caller asked for something malformed: a bad URI, option or config."""

    exit_code = 2


class SourceError(ArtifactImportError):
    """The source could not be listed or read."""


class RepositoryNotFoundError(SourceError):
    """The repository does not exist, or is private and the token cannot read it."""


class RevisionNotFoundError(SourceError):
    """The repository exists but the branch, tag or commit does not."""


class AccessDeniedError(SourceError):
    """The source refused access (401/403, gated repository)."""


class FileNotInSourceError(SourceError):
    """A file named on its own (``import SOURCE FILE...``) is not in the source."""


class DownloadError(SourceError):
    """A file's bytes could not be fetched, after the retries the policy allows."""


class UnsafePathError(ArtifactImportError):
    """File names that would escape the destination; nothing was written."""

    def __init__(self, offending: Iterable[tuple[str, str]]) -> None:
        self.offending = tuple(offending)
        listed = "; ".join(f"{path!r} ({reason})" for path, reason in self.offending[:_LISTED])
        more = f"; and {len(self.offending) - _LISTED} more" if len(self.offending) > _LISTED else ""
        super().__init__(
            f"refusing to import: {len(self.offending)} unsafe file name(s) in the listing: {listed}{more}. "
            "Nothing was written.",
            path=self.offending[0][0] if self.offending else None,
        )


class VerificationError(ArtifactImportError):
    """A file failed VERIFY; it was not archived."""

    exit_code = 3
    #: Every verdict on the file that failed, the failing ones among them (set by the VERIFY step), so that a
    #: caller can report them as well as the message.
    verdicts: tuple[Verdict, ...] = ()


class IntegrityError(VerificationError):
    """A file's bytes do not match the digest or size its source published."""


class ScannerError(VerificationError):
    """A scanner could not give a verdict (down, timed out, limit hit): the file is not clean."""


class UnsafeContentError(VerificationError):
    """A file's content is dangerous or malformed (malware, unsafe pickle, bad safetensors header)."""


class SignatureError(VerificationError):
    """The model's signature is missing (and required), does not verify, is not by the signer trusted, or
    does not vouch for exactly the files imported; nothing was archived."""


class StorageError(ArtifactImportError):
    """A storage could not be found, read or written."""


class StorageNotFoundError(StorageError):
    """No storage of that name is configured in the pool."""


class ReadOnlyStorageError(StorageError):
    """The destination is read-only; refused before any byte moved."""


class StorageFileNotFoundError(StorageError):
    """The file does not exist in the storage."""


class VFolderNotFoundError(StorageNotFoundError):
    """The vfolder (or its volume) does not exist."""


class InsufficientSpaceError(StorageError):
    """The destination's filesystem has less room than the import needs; nothing was fetched."""


class QuotaExceededError(StorageError):
    """The import does not fit in what is left of the quota scope; nothing was kept."""


class DestinationConflictError(ArtifactImportError):
    """Files at the destination that no earlier import wrote would be replaced, and the caller did not allow it
    (an import through the proxy's API); nothing was written."""

    def __init__(self, destination: str, files: Iterable[str]) -> None:
        self.files = tuple(files)
        listed = ", ".join(self.files[:_LISTED])
        more = f" and {len(self.files) - _LISTED} more" if len(self.files) > _LISTED else ""
        super().__init__(
            f"{destination} already holds {len(self.files)} file(s) of the same name(s) that no earlier import "
            f"wrote: {listed}{more}. Nothing was written; import again with replace_existing to replace them.",
            path=self.files[0] if self.files else None,
        )


class ServiceBusyError(ArtifactImportError):
    """The service holds as many unstarted imports as it may; try again after ``retry_after`` seconds."""

    def __init__(self, message: str, *, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after
