"""What an import would do, file by file, without doing it (``import --dry-run``)."""

from __future__ import annotations

import enum
from typing import Any

import attrs


class Action(enum.StrEnum):
    """What an import would do with one file."""

    #: Fetched from the source.
    FETCH = "fetch"
    #: Already at the destination, verified by the import that wrote it (see :mod:`.present`): not fetched.
    SKIP = "skip"
    #: Kept aside by an interrupted import (see :mod:`.record`): whole (nothing fetched) or the start of it
    #: (re-read for the verifiers, the rest fetched).
    RESUME = "resume"
    #: The destination holds its bytes under another name (a blob of the Hugging Face cache): verified there,
    #: not fetched.
    VERIFY = "verify"


@attrs.frozen
class PlannedFile:
    path: str
    size: int | None
    action: Action
    #: Bytes that would come from the source.
    fetch_bytes: int
    #: Bytes already at the destination that would be used (a resumed file's start, a whole kept file).
    kept_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "action": self.action.value,
            "fetch_bytes": self.fetch_bytes,
            "kept_bytes": self.kept_bytes,
        }


@attrs.frozen
class ImportPlan:
    """What :meth:`ImportPipeline.run` would fetch, skip and resume, decided as it decides (see
    :meth:`Journal.plan`); nothing is written to find out."""

    source: str
    revision: str
    commit: str
    destination: str
    files: tuple[PlannedFile, ...]
    #: A commit a killed import left half done, which the import completes first (its files count as to fetch
    #: here until it is).
    completes_commit: bool = False
    #: Files at the destination that no earlier import wrote (the user's own): the import replaces them and
    #: names them in :attr:`ImportResult.replaced`, or fails without ``replace_existing``.
    replaces: tuple[str, ...] = ()

    @property
    def fetching(self) -> tuple[PlannedFile, ...]:
        """The files of which at least one byte would come from the source."""
        return tuple(f for f in self.files if f.fetch_bytes or f.action is Action.FETCH)

    @property
    def fetch_bytes(self) -> int:
        return sum(f.fetch_bytes for f in self.files)

    @property
    def total_bytes(self) -> int:
        return sum(f.size or 0 for f in self.files)

    def count(self, action: Action) -> int:
        return sum(1 for f in self.files if f.action is action)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "dry_run": True,
            "source": self.source,
            "revision": self.revision,
            "commit": self.commit,
            "destination": self.destination,
            "files": [f.to_dict() for f in self.files],
            "file_count": len(self.files),
            "fetch_count": len(self.fetching),
            "skip_count": self.count(Action.SKIP),
            "resume_count": self.count(Action.RESUME),
            "verify_count": self.count(Action.VERIFY),
            "fetch_bytes": self.fetch_bytes,
            "total_bytes": self.total_bytes,
            "completes_commit": self.completes_commit,
            "replaces": list(self.replaces),
        }
