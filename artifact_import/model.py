"""Value types: what to import, what a source lists, what an import reports."""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterator, Mapping
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
    #: Already at the destination from an earlier import (manifest and stored size match): not fetched.
    SKIPPED = "skipped"
    #: Verified by an earlier, interrupted import and kept aside (parked): not fetched again.
    RESUMED = "resumed"
    #: The import was interrupted: this file (verified, or as far as it was received) is kept aside for the next one.
    PARKED = "parked"


def _patterns(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


#: Files an import moves at once (``--concurrency``/``--max-workers``), as ``hf download``'s default: with
#: 16 files of 20 MiB at 50 MiB/s per connection, 8 took 1.5 s where 4 took 2.3 s (large files are cut
#: into ranges over the shared connections anyway).
DEFAULT_CONCURRENT_FILES = 8

_HF_URI = re.compile(r"^hf://(?:(?P<kind>models|datasets|spaces)/)?(?P<repo>[^@\s]+?)(?:@(?P<rev>[^@\s]*))?/?$")
# ORG/NAME, or NAME alone: the Hub still serves its oldest repositories (gpt2, bert-base-uncased, squad) so.
_HF_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
#: The Hub's kinds of repository and the prefix its URLs (``hf://datasets/...``, ``/datasets/.../resolve``) give them.
REPO_TYPES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_URI_KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
_S3_URI = re.compile(r"^s3://(?P<repo>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](?:/[^\s]*)?)$")
SCHEMES = ("hf", "s3")


@attrs.frozen
class ModelTarget:
    """What to import: a repository at a revision (``hf``) or a bucket prefix (``s3``), optionally filtered.

    ``include`` and ``exclude`` are ``fnmatch`` globs on the path in the
    repository, as ``huggingface_hub``'s ``allow_patterns`` /
    ``ignore_patterns``: a pattern ending in ``/`` matches everything below it.
    """

    repo_id: str = attrs.field()
    revision: str = attrs.field(default="main")
    include: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    exclude: tuple[str, ...] = attrs.field(default=(), converter=_patterns)
    scheme: str = attrs.field(default="hf", kw_only=True)
    #: On the Hub: ``model``, ``dataset`` or ``space``.
    repo_type: str = attrs.field(default="model", kw_only=True)
    #: Exactly these paths (``hf download REPO FILE...``); each must be in the source. Empty: every file.
    files: tuple[str, ...] = attrs.field(default=(), converter=_patterns, kw_only=True)
    #: Paths imported whenever the source has them, whatever the filters say (the model's signature travels
    #: with the files it vouches for); unlike ``files``, they need not exist.
    also: tuple[str, ...] = attrs.field(default=(), converter=_patterns, kw_only=True)

    def __attrs_post_init__(self) -> None:
        if self.repo_type not in REPO_TYPES:
            raise ConfigError(f"unknown repository type {self.repo_type!r} (known: {', '.join(REPO_TYPES)})")
        if self.scheme == "hf":
            if not _HF_REPO_ID.match(self.repo_id) or ".." in self.repo_id:
                raise ConfigError(f"invalid repository id {self.repo_id!r}: expected ORG/NAME or NAME")
            if not self.revision or any(ch in self.revision for ch in "\x00\n\r\t "):
                raise ConfigError(f"invalid revision {self.revision!r}")
        elif self.scheme == "s3":
            bucket, _, prefix = self.repo_id.partition("/")
            if not _S3_URI.match(f"s3://{bucket}") or any(seg in ("..", ".") for seg in prefix.split("/")):
                raise ConfigError(f"invalid bucket or prefix {self.repo_id!r}: expected BUCKET[/PREFIX]")
        else:
            raise ConfigError(f"unknown source scheme {self.scheme!r} (known: {', '.join(SCHEMES)})")

    @classmethod
    def from_uri(
        cls,
        uri: str,
        *,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
        repo_type: str | None = None,
        files: tuple[str, ...] = (),
    ) -> ModelTarget:
        """Parse ``hf://[datasets/|spaces/]ORG/NAME[@REVISION]`` or ``s3://BUCKET[/PREFIX]``.

        ``repo_type`` (``--repo-type``) says what kind of Hub repository a URI without a
        ``datasets/`` or ``spaces/`` prefix names; it must agree with a prefix that is there.
        """
        if uri.startswith("s3://"):
            match = _S3_URI.match(uri)
            if match is None:
                raise ConfigError(f"invalid source {uri!r}: expected s3://BUCKET[/PREFIX]")
            return cls(match["repo"].rstrip("/"), "", include, exclude, scheme="s3", files=files)
        match = _HF_URI.match(uri)
        if match is None or match["rev"] == "":
            raise ConfigError(
                f"invalid source {uri!r}: expected hf://ORG/NAME[@REVISION], hf://datasets/ORG/NAME, "
                "hf://spaces/ORG/NAME or s3://BUCKET[/PREFIX]"
            )
        kind = _URI_KINDS[match["kind"]] if match["kind"] else None
        if kind is not None and repo_type is not None and kind != repo_type:
            raise ConfigError(f"{uri!r} names a {kind} repository, but the repository type given is {repo_type}")
        return cls(
            match["repo"], match["rev"] or "main", include, exclude, repo_type=kind or repo_type or "model", files=files
        )

    @property
    def source(self) -> str:
        """Where the files come from, without revision: ``hf://ORG/NAME``, ``hf://datasets/ORG/NAME``."""
        prefix = REPO_TYPES[self.repo_type] if self.scheme == "hf" else ""
        return f"{self.scheme}://{prefix}{self.repo_id}"

    @property
    def uri(self) -> str:
        return f"{self.source}@{self.revision}" if self.revision else self.source

    def selects(self, path: str) -> bool:
        """Whether ``path`` is one of ``also``, or one of ``files`` (if named) and passes the patterns."""
        return path in self.also or self.chosen(path)

    def chosen(self, path: str) -> bool:
        """Whether ``path`` is one of ``files`` (if named) and passes the include and exclude patterns."""
        if self.files and path not in self.files:
            return False
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
    #: MD5 of the content (the ETag of a single-part S3 upload).
    md5: str | None = None
    #: Opaque source-side version tag, used to detect a change between resumed requests.
    etag: str | None = None
    #: The source's own security scan of the file (the Hub's ``securityFileStatus``), if it publishes one.
    security: Mapping[str, Any] | None = attrs.field(default=None, eq=False, hash=False)


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
    #: On the Hub: ``model``, ``dataset`` or ``space``.
    repo_type: str = attrs.field(default="model", kw_only=True)

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


class _OwnDigest(Mapping[str, Any]):
    """The data of a checksum verdict kept by a :class:`FileResult` as the result's own sha256 and size."""

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "<the result's sha256 and size>"

    def __reduce__(self) -> str:
        return "OWN_DIGEST"  # pickled and copied as the one instance, which results recognise by identity


#: Stands for ``{"sha256": result.sha256, "size": result.size}`` in a checksum verdict a result keeps.
OWN_DIGEST: Mapping[str, Any] = _OwnDigest()
CHECKSUM = "checksum"


def compact_checksum(verdict: Verdict, sha256: str, size: int) -> Verdict:
    """``verdict`` as a :class:`FileResult` of that digest and size keeps it: a checksum verdict whose data is
    exactly them holds :data:`OWN_DIGEST` instead (alike for every file that passed the same way)."""
    if verdict.verifier != CHECKSUM or verdict.data is OWN_DIGEST:
        return verdict
    data = verdict.data
    if len(data) == 2 and data.get("sha256") == sha256 and data.get("size") == size:
        return Verdict(CHECKSUM, verdict.ok, verdict.detail, OWN_DIGEST)
    return verdict


@attrs.frozen
class FileResult:
    """What an import did with one file.

    A repository of 200,000 small files holds as many results until its
    commit: the checksum verdict's data, which repeats the result's own
    sha256 and size, is kept as :data:`OWN_DIGEST` (see
    :func:`compact_checksum`) and given back whole by :attr:`verdicts`; that
    and verdicts shared across files (:class:`~.verdictpool.VerdictPool`)
    took a third of the memory each file held.
    """

    path: str
    size: int
    sha256: str
    _verdicts: tuple[Verdict, ...] = attrs.field(default=(), alias="verdicts")
    #: Not fetched: the destination already held it (see :data:`FileState.SKIPPED`).
    skipped: bool = False
    #: Not fetched: an interrupted import had verified and parked it (see :data:`FileState.RESUMED`).
    resumed: bool = False
    #: How the stored file looked when it was written (size, mtime, inode on a filesystem), so that a later
    #: import notices a change in place without reading it; None where the storage gives none.
    stamp: str | None = None

    def __attrs_post_init__(self) -> None:
        kept = self._verdicts
        if any(v.verifier == CHECKSUM and v.data is not OWN_DIGEST for v in kept):
            compact = tuple(compact_checksum(v, self.sha256, self.size) for v in kept)
            object.__setattr__(self, "_verdicts", compact)

    @property
    def verdicts(self) -> tuple[Verdict, ...]:
        """Every verifier's verdict, the checksum's with its data (``sha256`` and ``size``) whole."""
        if not any(v.data is OWN_DIGEST for v in self._verdicts):
            return self._verdicts
        digest = {"sha256": self.sha256, "size": self.size}
        return tuple(
            Verdict(v.verifier, v.ok, v.detail, dict(digest)) if v.data is OWN_DIGEST else v for v in self._verdicts
        )

    @property
    def kept_verdicts(self) -> tuple[Verdict, ...]:
        """The verdicts as kept (a checksum's data may be :data:`OWN_DIGEST`): for sharing them, not reading."""
        return self._verdicts

    def to_dict(self) -> dict[str, Any]:
        found = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "verdicts": [attrs.asdict(v) for v in self.verdicts],
            "skipped": self.skipped,
            "resumed": self.resumed,
        }
        return found if self.stamp is None else {**found, "stamp": self.stamp}


@attrs.frozen
class SignatureVerdict:
    """What the import found of the model's signature (``--signature-policy``)."""

    #: ``verified`` (every imported file matched the signed digests), ``unsigned`` (none, and the policy let
    #: that pass) or ``not checked`` (policy ``off``).
    status: str
    policy: str
    #: How the signer is identified (``key``, ``certificate``, ``sigstore``) and who it is.
    method: str | None = None
    signer: str | None = None
    #: The signature's path and sha256.
    file: str | None = None
    sha256: str | None = None
    #: Imported files held to a signed digest.
    files_signed: int = 0
    #: Imported files the signature does not cover on purpose: itself, git files, paths its signer ignored.
    not_covered: tuple[str, ...] = ()
    #: Signed files not imported because the selection (``--include``, ``--exclude``, FILE...) left them out.
    signed_not_selected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "not_covered": list(self.not_covered)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SignatureVerdict | None:
        """The verdict a manifest recorded, or None if it holds none (or not one of ours)."""
        try:
            return cls(**{**data, "not_covered": tuple(data.get("not_covered") or ())})
        except TypeError:
            return None


NOT_CHECKED = SignatureVerdict("not checked", "off")


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
    #: Bytes received from the source by this import (files skipped or resumed from a local copy add none).
    fetched_bytes: int = 0
    #: Files the destination held that no earlier import wrote (not in its manifest), replaced by this one.
    replaced: tuple[str, ...] = ()
    signature: SignatureVerdict = NOT_CHECKED

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def skipped(self) -> int:
        """How many files were already at the destination and were not fetched again."""
        return sum(1 for f in self.files if f.skipped)

    @property
    def resumed(self) -> int:
        """How many files an interrupted import had verified and kept aside, so were not fetched again."""
        return sum(1 for f in self.files if f.resumed)

    def malware_scan(self) -> dict[str, Any]:
        """Whether a malware scanner looked at every file, and which."""
        engines = {
            str(v.data.get("engine", v.verifier)) for f in self.files for v in f.kept_verdicts if v.verifier == "clamav"
        }
        ran = bool(self.files) and all(any(v.verifier == "clamav" for v in f.kept_verdicts) for f in self.files)
        return {"ran": ran, "engine": ", ".join(sorted(engines)) if engines else None}

    def to_dict(self, *, files: bool = True) -> dict[str, Any]:
        """``files``: with every file's result (without, for writing them one at a time: see the CLI's
        ``--json``)."""
        found = {
            "ok": True,
            "malware_scan": self.malware_scan(),
            "source": self.source,
            "revision": self.revision,
            "commit": self.commit,
            "destination": self.destination,
            "manifest": self.manifest_path,
            "file_count": len(self.files),
            "skipped_count": self.skipped,
            "resumed_count": self.resumed,
            "total_bytes": self.total_bytes,
            "fetched_bytes": self.fetched_bytes,
            "replaced": list(self.replaced),
            "signature": self.signature.to_dict(),
            "seconds": round(self.seconds, 3),
        }
        return {**found, "files": [f.to_dict() for f in self.files]} if files else found
