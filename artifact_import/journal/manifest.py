"""The manifest written beside an imported artifact: what came from where, with digests."""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import attrs

from .. import __version__
from ..errors import ArtifactImportError
from ..model import CHECKSUM, OWN_DIGEST, FileResult, ResolvedArtifact, SignatureVerdict, Verdict
from ..paths import RESERVED_DIR
from ..storages.base import AbstractStorage
from ..verdictpool import VerdictPool
from .jsonfile import read_json

log = logging.getLogger(__name__)

MANIFEST_PATH = f"{RESERVED_DIR}/manifest.json"
MANIFEST_FORMAT = 1


def build_manifest(
    artifact: ResolvedArtifact, files: Sequence[FileResult], *, signature: SignatureVerdict | None = None
) -> dict[str, Any]:
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "tool": f"artifact-import {__version__}",
        "source": artifact.source,
        "revision": artifact.revision,
        "commit": artifact.commit,
        "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": [f.to_dict() for f in sorted(files, key=lambda f: f.path)],
    }
    if signature is not None:
        # What the import found of the model's signature: who signed, how it was checked (see .signing).
        manifest["signature"] = signature.to_dict()
    return manifest


class ResultLines:
    """Each :class:`FileResult` as one line of compact JSON, the same text as ``json.dumps(result.to_dict(),
    separators=(",", ":"))``, written faster: a verdict said of many files (one object, see
    :class:`~..verdictpool.VerdictPool`) is encoded once, not once per file. Writing the record of 100,000
    parked files spent seconds of a SIGTERM's grace period in ``attrs.asdict``."""

    #: Distinct shared verdicts kept encoded.
    LIMIT = 4096

    def __init__(self) -> None:
        # Keyed by id(): the verdict is kept beside its text, so that an id is never reused while it is here.
        self._encoded: dict[int, tuple[Verdict, str]] = {}

    def _verdict(self, verdict: Verdict, result: FileResult) -> str:
        kept = self._encoded.get(id(verdict))
        if kept is None or kept[0] is not verdict:
            kept = (verdict, self._encode(verdict))
            # The checksum's data is the file's own digest: alike only when the result keeps it as OWN_DIGEST.
            alike = verdict.verifier != CHECKSUM or verdict.data is OWN_DIGEST
            if alike and len(self._encoded) < self.LIMIT:
                self._encoded[id(verdict)] = kept
        if verdict.data is not OWN_DIGEST:
            return kept[1]
        return f'{kept[1]}{{"sha256":{json.dumps(result.sha256)},"size":{int(result.size)}}}}}'

    @staticmethod
    def _encode(verdict: Verdict) -> str:
        """The verdict's JSON; for :data:`OWN_DIGEST` data, all of it but the data's value and the closing brace."""
        own = verdict.data is OWN_DIGEST
        data = None if own else verdict.data
        plain = {"verifier": verdict.verifier, "ok": verdict.ok, "detail": verdict.detail, "data": data}
        try:
            text = json.dumps(plain, separators=(",", ":"))
        except TypeError:  # data holding attrs instances: as to_dict says them
            text = json.dumps(attrs.asdict(verdict), separators=(",", ":"))
        return text[: -len("null}")] if own else text

    def __call__(self, result: FileResult) -> str:
        stamp = "" if result.stamp is None else ',"stamp":' + json.dumps(result.stamp)
        return (
            f'{{"path":{json.dumps(result.path)},"size":{int(result.size)},"sha256":{json.dumps(result.sha256)},'
            f'"verdicts":[{",".join(self._verdict(v, result) for v in result.kept_verdicts)}],'
            f'"skipped":{"true" if result.skipped else "false"},"resumed":{"true" if result.resumed else "false"}'
            f"{stamp}}}"
        )


class ManifestChunks:
    """The manifest of :func:`build_manifest` as JSON bytes, a file entry per line, a thousand entries a chunk:
    never the whole of it in memory (at 200,000 files the indented document alone was 250 MB). Iterable as
    often as needed, the same bytes each time."""

    def __init__(
        self,
        artifact: ResolvedArtifact,
        files: Sequence[FileResult],
        *,
        signature: SignatureVerdict | None = None,
        per_chunk: int = 1000,
    ) -> None:
        head = {k: v for k, v in build_manifest(artifact, [], signature=signature).items() if k != "files"}
        self._head = json.dumps(head, indent=2)[: -len("\n}")] + ',\n  "files": ['
        self._files = sorted(files, key=lambda f: f.path)
        self._per_chunk = per_chunk

    def __iter__(self) -> Iterator[bytes]:
        yield self._head.encode()
        line = ResultLines()
        for at in range(0, len(self._files), self._per_chunk):
            lines = (line(f) for f in self._files[at : at + self._per_chunk])
            yield (("," if at else "") + "\n    " + ",\n    ".join(lines)).encode()
        yield b"\n  ]\n}\n"


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()


async def read_manifest(storage: AbstractStorage) -> dict[str, Any] | None:
    """The destination's manifest, or ``None`` if there is none or it cannot be used. Its ``files`` are
    :class:`FileResult` (None for an entry that is not well formed), made as each line is read (see
    :class:`EntryParser`)."""
    try:
        manifest = await read_json(storage, MANIFEST_PATH, entry=EntryParser())
    except (ArtifactImportError, ValueError) as exc:
        log.warning("%s: cannot use %s (%s); importing every file", storage.describe(), MANIFEST_PATH, exc)
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None
    return manifest


class EntryParser:
    """A file entry of a manifest or record as a :class:`FileResult`, None if it is not well formed.

    A verdict said of many files alike ("not a pickle", the Hub's scan) is
    one object for all of them, as the import that wrote them held it: the
    manifest of 200,000 files read as a dict each, then a result each with
    verdicts of its own, took an import that had nothing to fetch past 600 MB.
    """

    def __init__(self) -> None:
        self._pool = VerdictPool()

    @staticmethod
    def verdict(raw: Any) -> Verdict:
        return Verdict(str(raw["verifier"]), bool(raw["ok"]), str(raw.get("detail", "")), dict(raw.get("data") or {}))

    def __call__(self, entry: Any) -> FileResult | None:
        if isinstance(entry, FileResult):
            return entry
        try:
            size, sha256 = int(entry["size"]), str(entry["sha256"]).lower()
            verdicts = self._pool.verdicts((self.verdict(v) for v in entry.get("verdicts", [])), sha256, size)
            stamp = entry.get("stamp")
            return FileResult(
                str(entry["path"]), size, sha256, verdicts, stamp=str(stamp) if stamp is not None else None
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def manifest_files(manifest: dict[str, Any]) -> dict[str, FileResult]:
    """The well-formed file entries of a manifest (or of a record of parked files), by path."""
    found: dict[str, FileResult] = {}
    parse = EntryParser()
    for entry in manifest.get("files", []):
        result = parse(entry)
        if result is not None:
            found[result.path] = result
    return found
