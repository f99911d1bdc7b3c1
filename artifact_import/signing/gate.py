"""Holding an import to its signature: the files, by name and by the sha256 the import computed.

A file the signature lists must arrive with exactly the signed digest; a
file it does not list is refused, unless the signature leaves it out on
purpose (the signature file itself, git's files at the root, as
``model_signing verify`` ignores them by default, and the paths its signer
ignored); a signed file the source does not have is refused, unless the
user's selection (``--include``, ``--exclude``, FILE...) left it out.
Names are compared as ``model_signing`` writes them (``/``-separated) in
Unicode NFC, so a model signed on a filesystem that decomposes accents
matches the repository's names; the import already refuses two names that
are the same file under normalisation.
"""

from __future__ import annotations

import asyncio
import hashlib
import unicodedata
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import PurePosixPath

from ..errors import SignatureError
from ..model import ArtifactFile, FileResult, ModelTarget, SignatureVerdict
from ..streams import closing
from .bundle import SignedModel, verify_signature
from .settings import SignatureSettings

#: A signature lists a name and a digest per file (~150 bytes, base64 in the bundle): this is 300,000 files.
MAX_SIGNATURE_BYTES = 64 << 20
#: What ``model_signing`` leaves out of a signature and of its check by default (at the model's root).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
_LISTED = 5


def _name(path: str) -> str:
    return unicodedata.normalize("NFC", path)


def _names(paths: Sequence[str]) -> str:
    more = f" and {len(paths) - _LISTED} more" if len(paths) > _LISTED else ""
    return ", ".join(paths[:_LISTED]) + more


class SignatureGate:
    """The signed digests of one import, and the check of its files against them."""

    def __init__(
        self, settings: SignatureSettings, model: ModelTarget, signed: SignedModel, signature_sha256: str
    ) -> None:
        self.settings = settings
        self.model = model
        self.signed = signed
        self.signature_sha256 = signature_sha256
        ignored = [*GIT_PATHS, settings.file]
        for path in signed.ignore_paths:
            pure = PurePosixPath(path)
            # Only plain relative paths: "." or ".." would leave every file unchecked.
            if path and not pure.is_absolute() and ".." not in pure.parts and pure.parts:
                ignored.append(_name(str(pure)))
        self._ignored = tuple(PurePosixPath(p) for p in ignored)

    def _covered(self, path: str) -> bool:
        return _name(path) in self.signed.digests

    def _ignored_path(self, path: str) -> bool:
        pure = PurePosixPath(_name(path))
        return any(pure == p or pure.is_relative_to(p) for p in self._ignored)

    def _refuse(self, problems: list[str]) -> SignatureError:
        return SignatureError(
            f"the files do not match the signature {self.settings.file} (signed by {self.signed.signer}): "
            + "; ".join(problems)
            + ". Nothing was archived.",
            path=self.settings.file,
        )

    def check_listing(self, files: Sequence[ArtifactFile]) -> None:
        """Before any byte is fetched: every file listed is signed (or left out on purpose) with the digest the
        source publishes for it, and every signed file the selection wants is listed."""
        listed = {_name(f.path) for f in files}
        changed = [
            f"{f.path} (the source publishes sha256 {f.sha256}, the signature {self.signed.digests[_name(f.path)]})"
            for f in files
            if self._covered(f.path) and f.sha256 is not None and f.sha256.lower() != self.signed.digests[_name(f.path)]
        ]
        unsigned = [f.path for f in files if not self._covered(f.path) and not self._ignored_path(f.path)]
        missing = [p for p in sorted(self.signed.digests) if p not in listed and self.model.chosen(p)]
        problems = []
        if changed:
            problems.append(f"changed: {_names(changed)}")
        if unsigned:
            problems.append(f"not signed: {_names(unsigned)}")
        if missing:
            problems.append(f"signed but not in the source: {_names(missing)}")
        if problems:
            raise self._refuse(problems)
        if not any(self._covered(f.path) for f in files):
            raise self._refuse(["the signature vouches for none of the files to import"])

    def _problem(self, result: FileResult) -> str | None:
        if result.path == self.settings.file:
            if result.sha256 != self.signature_sha256:
                return f"{result.path} changed since it was checked (sha256 {result.sha256})"
            return None
        expected = self.signed.digests.get(_name(result.path))
        if expected is None:
            return None if self._ignored_path(result.path) else f"not signed: {result.path}"
        if result.sha256 != expected:
            return f"changed: {result.path} (sha256 {result.sha256}, signed {expected})"
        return None

    def check_file(self, result: FileResult) -> None:
        """As soon as a file is verified: its sha256 is the signed one."""
        problem = self._problem(result)
        if problem is not None:
            raise self._refuse([problem])

    def verdict(self, results: Sequence[FileResult]) -> SignatureVerdict:
        """The last gate, over every file the commit will make visible (fetched, kept or already present)."""
        problems = [p for p in map(self._problem, results) if p is not None]
        if not any(r.path == self.settings.file for r in results):
            problems.append(f"{self.settings.file} is not among the files imported")
        if problems:
            raise self._refuse(problems)
        imported = {_name(r.path) for r in results}
        return SignatureVerdict(
            status="verified",
            policy=self.settings.effective_policy,
            method=self.signed.method,
            signer=self.signed.signer,
            file=self.settings.file,
            sha256=self.signature_sha256,
            files_signed=sum(1 for r in results if self._covered(r.path)),
            not_covered=tuple(sorted(r.path for r in results if not self._covered(r.path))),
            signed_not_selected=sum(1 for p in self.signed.digests if p not in imported),
        )


async def open_gate(
    settings: SignatureSettings,
    model: ModelTarget,
    files: Sequence[ArtifactFile],
    fetch: Callable[[ArtifactFile], AsyncIterator[bytes]],
) -> SignatureGate | None:
    """Fetch and verify the signature among ``files`` and check the listing against it; None if the model
    has none and the policy lets that pass. Nothing else is fetched before this has passed."""
    settings.check()
    signature = next((f for f in files if f.path == settings.file), None)
    if signature is None:
        if settings.effective_policy == "require":
            raise SignatureError(
                f"{model.uri}: no signature ({settings.file}) in the source, and the signature policy "
                "(require) refuses an unsigned model. Nothing was fetched.",
                path=settings.file,
            )
        return None
    if signature.size is not None and signature.size > MAX_SIGNATURE_BYTES:
        raise SignatureError(
            f"{settings.file}: {signature.size} bytes is not a model signature (at most {MAX_SIGNATURE_BYTES})",
            path=settings.file,
        )
    data = bytearray()
    chunks = fetch(signature)
    async with closing(chunks):
        async for chunk in chunks:
            data += chunk
            if len(data) > MAX_SIGNATURE_BYTES:
                raise SignatureError(f"{settings.file}: larger than a model signature can be", path=settings.file)
    signed = await asyncio.to_thread(verify_signature, bytes(data), settings, name=settings.file)
    gate = SignatureGate(settings, model, signed, hashlib.sha256(data).hexdigest())
    gate.check_listing(files)
    return gate
