"""Verifiers: fed every byte of a file, each returns a verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Verifier
from .clamav import ClamAVVerifier
from .gguf import GgufVerifier
from .hubscan import HubScanVerifier
from .keras import KerasVerifier
from .nemo import NemoVerifier
from .onnx import OnnxVerifier
from .pickle import PickleVerifier
from .safetensors import SafetensorsVerifier

if TYPE_CHECKING:
    from ..config import VerifySettings


def build_verifiers(settings: VerifySettings) -> list[Verifier]:
    """The verifiers the CLI runs besides the checksums: what the settings ask for."""
    verifiers: list[Verifier] = [SafetensorsVerifier()]
    if settings.pickle_policy != "off" or settings.torchscript_policy != "off":
        verifiers.append(
            PickleVerifier(
                settings.pickle_policy, extra_safe=settings.pickle_allow, torchscript=settings.torchscript_policy
            )
        )
    if settings.format_policy != "off":
        verifiers += [cls(settings.format_policy) for cls in (KerasVerifier, OnnxVerifier, GgufVerifier, NemoVerifier)]
    if settings.hub_scan_policy != "off":
        verifiers.append(HubScanVerifier(settings.hub_scan_policy))
    if settings.clamd:
        verifiers.append(
            ClamAVVerifier(
                settings.clamd,
                window_size=settings.clamd_window,
                overlap=settings.clamd_overlap,
                timeout=settings.clamd_timeout,
                unset=settings.clamd_unset,
            )
        )
    return verifiers
