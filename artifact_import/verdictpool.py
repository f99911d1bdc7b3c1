"""Verdicts said of many files alike, kept once: what a repository of 200,000 small files holds per file.

Most files of such a repository are judged alike ("not a pickle", the Hub's
"safe", a checksum that matched): one verdict object, and one tuple of them,
serves every file judged the same way. A checksum verdict is alike across
files once its data, the file's own sha256 and size, is left to the result
that holds it (:func:`~.model.compact_checksum`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from .model import OWN_DIGEST, Verdict, compact_checksum


class VerdictPool:
    """Hands out one kept object for verdicts (and tuples of them) that are equal, up to :attr:`LIMIT` of
    each, so that a pool fed a hostile variety of verdicts stays bounded (the rest are used as they are)."""

    LIMIT = 4096

    def __init__(self) -> None:
        self._verdicts: dict[str, Verdict] = {}
        # Keyed by the ids of kept verdicts, which live as long as the pool: an id is never reused meanwhile.
        self._tuples: dict[tuple[int, ...], tuple[Verdict, ...]] = {}
        self._kept: set[int] = set()

    def verdict(self, verdict: Verdict) -> Verdict:
        """The kept verdict equal to ``verdict`` (``verdict`` itself, kept from now on, if there is none)."""
        if id(verdict) in self._kept:
            return verdict
        try:
            data = "own" if verdict.data is OWN_DIGEST else json.dumps(verdict.data, sort_keys=True)
        except (TypeError, ValueError):
            return verdict  # data no JSON can say: not compared, not kept
        key = json.dumps([verdict.verifier, verdict.ok, verdict.detail, data])
        kept = self._verdicts.get(key)
        if kept is not None:
            return kept
        if len(self._verdicts) >= self.LIMIT:
            return verdict
        self._verdicts[key] = verdict
        self._kept.add(id(verdict))
        return verdict

    def verdicts(self, verdicts: Iterable[Verdict], sha256: str, size: int) -> tuple[Verdict, ...]:
        """``verdicts`` of a file of that digest and size, as a :class:`~.model.FileResult` keeps them: each
        checksum verdict compacted, each verdict and the tuple the kept ones."""
        out = tuple(self.verdict(compact_checksum(v, sha256, size)) for v in verdicts)
        if not all(id(v) in self._kept for v in out):
            return out
        key = tuple(id(v) for v in out)
        kept = self._tuples.get(key)
        if kept is not None:
            return kept
        if len(self._tuples) < self.LIMIT:
            self._tuples[key] = out
        return out
