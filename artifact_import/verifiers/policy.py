"""What a content verifier does with a finding: fail the import, warn and import, or not look."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..model import ArtifactFile, Verdict
from .base import Verifier


class Policy(enum.StrEnum):
    FAIL = "fail"
    WARN = "warn"
    OFF = "off"

    @classmethod
    def parse(cls, value: Policy | str, what: str) -> Policy:
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"{what} policy {value!r}: expected 'fail', 'warn' or 'off'") from None


class FormatVerifier(Verifier):
    """A check of one model format, chosen by the names its loader goes by, under ``--format-policy``."""

    suffixes: tuple[str, ...] = ()

    def __init__(self, policy: Policy | str = Policy.FAIL) -> None:
        self.policy = Policy.parse(policy, "format")

    def applies_to(self, file: ArtifactFile) -> bool:
        return self.policy is not Policy.OFF and file.path.lower().endswith(self.suffixes)


def judge(
    verifier: str,
    policy: Policy,
    findings: list[str],
    *,
    clean: str,
    data: Mapping[str, Any],
    hint: str,
) -> Verdict:
    """One verdict from a verifier's findings under ``policy``.

    A warned verdict passes, and carries its findings in ``data["warning"]``
    so that the CLI can print them and the manifest keeps them.
    """
    if not findings:
        return Verdict(verifier, True, clean, data)
    listed = "; ".join(findings)
    if policy is Policy.WARN:
        return Verdict(verifier, True, f"warning (policy warn): {listed}", {**data, "warning": listed})
    return Verdict(verifier, False, f"{listed}. {hint}", data)
