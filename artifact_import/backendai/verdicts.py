"""Verdicts as the storage proxy records them (``VerifierResult`` per verifier), and its verifier plugins run
on the files of an import before any becomes visible."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from ai.backend.common.data.artifact.types import VerificationStepResult, VerifierResult
from ai.backend.storage.data.storage.types import ImportStepContext as TheirContext
from ai.backend.storage.plugin import AbstractArtifactVerifierPlugin

from ..errors import StorageError
from ..model import Verdict
from ..paths import RESERVED_DIR
from ..redact import redact_text as redact

log = logging.getLogger(__name__)

#: How their result names our verifiers (beside the names of their plugins).
PREFIX = "artifact-import:"
#: Files a result names in its metadata (the others are counted).
_LISTED = 20


def our_results(
    verdicts: Iterable[tuple[str, Verdict]], scanned_at: datetime, seconds: float
) -> dict[str, VerifierResult]:
    """One ``VerifierResult`` per verifier of ours from ``(path, verdict)`` pairs: files it looked at, files
    it refused, and why (by path, in its metadata)."""
    by_verifier: dict[str, list[tuple[str, Verdict]]] = {}
    for path, verdict in verdicts:
        by_verifier.setdefault(verdict.verifier, []).append((path, verdict))
    results = {}
    for name, found in by_verifier.items():
        refused = [(path, v) for path, v in found if not v.ok]
        metadata = {path: redact(v.detail) for path, v in refused[:_LISTED]}
        if len(refused) > _LISTED:
            metadata["…"] = f"and {len(refused) - _LISTED} more"
        results[f"{PREFIX}{name}"] = VerifierResult(
            success=not refused,
            infected_count=len(refused),
            scanned_at=scanned_at,
            scan_time=seconds,
            scanned_count=len(found),
            metadata=metadata,
        )
    return results


def step_result(results: Mapping[str, VerifierResult]) -> VerificationStepResult:
    return VerificationStepResult(verifiers=dict(results))


async def run_plugins(
    plugins: Mapping[str, AbstractArtifactVerifierPlugin],
    root: Path,
    files: Sequence[tuple[str, Path | None]],
    context: TheirContext,
) -> dict[str, VerifierResult]:
    """Each of ``plugins`` on a folder holding ``files`` (the local file holding each path's bytes) under
    their paths, as their VERIFY step runs them (``infected_count > 0`` or an error is a refusal). The
    folder, under ``root``'s reserved folder, holds links to the files, not copies, and is gone when this
    returns."""
    if not plugins:
        return {}
    reserved = root / RESERVED_DIR
    had_reserved = await asyncio.to_thread(reserved.exists)
    tree = reserved / "verify" / secrets.token_hex(8)
    results = {}
    try:
        await asyncio.to_thread(_link_tree, tree, files)
        for name, plugin in plugins.items():
            started = datetime.now(UTC)
            try:
                found = await plugin.verify(tree, context)
            except Exception as exc:
                log.error("verifier plugin %s failed: %s", name, redact(str(exc)))
                results[name] = VerifierResult(
                    success=False,
                    infected_count=0,
                    scanned_at=started,
                    scan_time=(datetime.now(UTC) - started).total_seconds(),
                    scanned_count=0,
                    metadata={},
                    error=redact(str(exc)) or type(exc).__name__,
                )
                continue
            results[name] = VerifierResult(
                success=found.infected_count == 0,
                infected_count=found.infected_count,
                scanned_at=started,
                scan_time=(datetime.now(UTC) - started).total_seconds(),
                scanned_count=found.scanned_count,
                metadata={str(k): str(v) for k, v in (found.metadata or {}).items()},
            )
    finally:
        await asyncio.to_thread(_remove_tree, tree.parent, None if had_reserved else reserved)
    return results


def _remove_tree(tree: Path, made: Path | None) -> None:
    shutil.rmtree(tree, ignore_errors=True)
    if made is not None:
        with contextlib.suppress(OSError):
            made.rmdir()  # only if empty: a manifest written there since stays


def _link_tree(tree: Path, files: Sequence[tuple[str, Path | None]]) -> None:
    for relpath, source in files:
        if source is None:
            raise StorageError(f"{relpath}: its bytes are not in a local file, so the verifier plugins cannot see it")
        link = tree / relpath
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, link)
        except OSError:
            # Another filesystem (or one without hard links): a copy, still never the final name.
            shutil.copyfile(source, link)
