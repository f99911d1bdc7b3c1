"""Value types: what to import, what a source lists, what an import reports."""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError


class ArtifactStorageImportStep(enum.StrEnum):
    """The three stages of an import, each mapped to a storage."""

    DOWNLOAD = "download"
    VERIFY = "verify"
    ARCHIVE = "archive"


class FileState(enum.StrEnum):
    """Where one file is in its import."""

    QUEUED = "queued"
    RUNNING = "running"
    #: Verified and written, waiting for the whole import to pass before it becomes visible.
    VERIFIED = "verified"
    DONE = "done"
    FAILED = "failed"


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


_HF_URI = re.compile(r"^hf://(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[^@\s]+))?/?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@attrs.frozen
class ModelTarget:
    """What to import: a repository at a revision, optionally filtered.

    ``include`` and ``exclude`` are ``fnmatch`` globs on the path in the
    repository, as ``huggingface_hub``'s ``allow_patterns`` /
    ``ignore_patterns``: a pattern ending in ``/`` matches everything below it.
    """

    repo_id: str = attrs.field()
    revision: str = attrs.field(default="main")
    include: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_patterns)

    @repo_id.validator
    def _check_repo_id(self, _: attrs.Attribute[str], value: str) -> None:
        if not _REPO_ID.match(value) or ".." in value:
            raise ConfigError(f"invalid repository id {value!r}: expected ORG/NAME")

    @revision.validator
    def _check_revision(self, _: attrs.Attribute[str], value: str) -> None:
        if not value or any(ch in value for ch in "\x00\n\r\t "):
            raise ConfigError(f"invalid revision {value!r}")

    @classmethod
    def from_uri(cls, uri: str, *, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> ModelTarget:
        """Parse ``hf://ORG/NAME[@REVISION]``."""
        match = _HF_URI.match(uri)
        if match is None:
            raise ConfigError(f"invalid source {uri!r}: expected hf://ORG/NAME[@REVISION]")
        return cls(match["repo"], match["rev"] or "main", include, exclude)

    @property
    def uri(self) -> str:
        return f"hf://{self.repo_id}@{self.revision}"

    def selects(self, path: str) -> bool:
        """Whether ``path`` passes the include and exclude patterns."""
        if self.include and not any(_glob_match(path, p) for p in self.include):
            return False
        return not any(_glob_match(path, p) for p in self.exclude)


def _glob_match(path: str, pattern: str) -> bool:
    if pattern.endswith("/"):
        pattern += "*"
    return fnmatch.fnmatchcase(path, pattern)


@attrs.frozen
class ArtifactFile:
    """One file as its source lists it, with the digests the source publishes."""

    path: str
    size: int | None
    #: sha256 of the content (LFS files on the Hub publish it).
    sha256: str | None = None
    #: git blob sha1 (small, non-LFS files on the Hub).
    git_sha1: str | None = None
    #: Opaque source-side version tag, used to detect a change between resumed requests.
    etag: str | None = None


@attrs.frozen
class ResolvedArtifact:
    """A source resolved to an immutable version, with the files to import."""

    #: Where the files come from, without revision ("hf://ORG/NAME").
    source: str
    repo_id: str
    revision: str
    #: The immutable id every file is fetched at (a git commit on the Hub).
    commit: str
    files: tuple[ArtifactFile, ...]

    @property
    def total_size(self) -> int:
        return sum(f.size or 0 for f in self.files)


@attrs.frozen
class Verdict:
    """One verifier's judgement on one file."""

    verifier: str
    ok: bool
    detail: str = ""
    data: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class ProgressEvent:
    """Emitted as files move; ``bytes_total`` is ``None`` when the size is unknown."""

    path: str
    state: FileState
    step: ArtifactStorageImportStep | None
    bytes_done: int
    bytes_total: int | None
    error: str | None = None


@attrs.frozen
class FileResult:
    path: str
    size: int
    sha256: str
    verdicts: tuple[Verdict, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "verdicts": [attrs.asdict(v) for v in self.verdicts],
        }


@attrs.frozen
class ImportResult:
    """A finished, successful import."""

    source: str
    revision: str
    commit: str
    destination: str
    files: tuple[FileResult, ...]
    seconds: float
    manifest_path: str

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "source": self.source,
            "revision": self.revision,
            "commit": self.commit,
            "destination": self.destination,
            "manifest": self.manifest_path,
            "files": [f.to_dict() for f in self.files],
            "file_count": len(self.files),
            "total_bytes": self.total_bytes,
            "seconds": round(self.seconds, 3),
        }
