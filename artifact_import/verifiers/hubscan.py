"""The Hub's own scan of each file (ClamAV and pickle-import extraction), recorded and enforced.

The Hugging Face Hub scans every file it stores and publishes the result in
its tree listing (``securityFileStatus``: ``status``, ``avScan``,
``pickleImportScan``). When the source lists it, the verdict records it; a
file the Hub itself flags (a virus, a dangerous pickle import, status
``unsafe``) is refused under policy ``fail``. The Hub's "suspicious" pickle
level is recorded only: the pickle verifier makes its own, stricter call.
"""

from __future__ import annotations

from typing import Any

from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession
from .policy import Policy, judge

_HINT = "Use --hub-scan-policy warn to import it anyway"


class HubScanVerifier(Verifier):
    name = "hub-scan"

    def __init__(self, policy: Policy | str = Policy.FAIL) -> None:
        self.policy = Policy.parse(policy, "hub scan")

    def applies_to(self, file: ArtifactFile) -> bool:
        return self.policy is not Policy.OFF and file.security is not None

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _Session(self, file)


class _Session(VerifierSession):
    def __init__(self, verifier: HubScanVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        self._file = file

    async def feed(self, chunk: bytes) -> None:
        pass  # the verdict is the source's, known before any byte

    async def finish(self) -> Verdict:
        status: dict[str, Any] = dict(self._file.security or {})
        findings = flagged(status)
        clean = f"the hub's scan: {status.get('status', 'unknown')}"
        return judge(self._v.name, self._v.policy, findings, clean=clean, data=status, hint=_HINT)


def flagged(status: dict[str, Any]) -> list[str]:
    """What the Hub's scan flags in one file."""
    found = []
    av = status.get("avScan") or {}
    if av.get("virusFound"):
        found.append(f"the hub's malware scan found {', '.join(av.get('virusNames') or ['a virus'])}")
    pickles = status.get("pickleImportScan") or {}
    if pickles.get("highestSafetyLevel") == "dangerous":
        names = [
            f"{i.get('module')}.{i.get('name')}" for i in pickles.get("imports") or [] if i.get("safety") == "dangerous"
        ]
        found.append(f"the hub's pickle scan flags dangerous imports {', '.join(names) or '(unnamed)'}")
    if status.get("status") == "unsafe" and not found:
        found.append("the hub marks this file unsafe")
    return found
