"""Signed models: an OpenSSF model signature (``model.sig``) checked, then every imported file held to it.

:mod:`.settings` says whether a signature is required and whose to trust;
:mod:`.bundle` verifies the signature with the ``model-signing`` library
(the ``signing`` extra) and reads the digests it vouches for; :mod:`.gate`
holds the files of an import to them, using the sha256 each file's import
computed anyway.
"""

from __future__ import annotations

from .settings import DEFAULT_SIGNATURE_FILE, POLICIES, SignatureSettings

__all__ = ["DEFAULT_SIGNATURE_FILE", "POLICIES", "SignatureSettings"]
