"""The signature itself: verified by the ``model-signing`` library, read into the digests it vouches for.

Only the library's verification primitives are used (its verifiers for a
key, a certificate chain and Sigstore, and its reading of the signed in-toto
statement); not its ``verify(model_path)``, which hashes a directory on disk:
the import already computes every file's sha256 as the bytes pass, so the
files are held to the signed digests without a second read (see
:mod:`.gate`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import pathlib
import tempfile
import unicodedata
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import ConfigError, SignatureError
from .settings import SignatureSettings

log = logging.getLogger(__name__)


@attrs.frozen
class SignedModel:
    """What a verified signature vouches for."""

    #: ``key``, ``certificate`` or ``sigstore``.
    method: str
    #: Who signed, as verified: the key's fingerprint, the signing certificate's subject and fingerprint, or the
    #: Sigstore identity and issuer.
    signer: str
    #: sha256 of each signed file, by its path (``/``-separated, Unicode NFC).
    digests: Mapping[str, str]
    #: Paths the signer left out of the signature on purpose (relative to the model's root).
    ignore_paths: tuple[str, ...]


def verify_signature(data: bytes, settings: SignatureSettings, *, name: str) -> SignedModel:
    """Verify the signature ``data`` (the file ``name``) against the signer ``settings`` trusts.

    Blocking (crypto and parsing): run it in a thread. Raises
    :class:`SignatureError` saying what failed: a signature that is not one,
    one by another signer, one whose content was altered, or one over
    digests other than per-file sha256.
    """
    method = settings.method
    assert method is not None
    try:
        verifier = _verifier(settings)
    except Exception as exc:
        where = (
            " (its trust root comes from Sigstore's TUF repository over the network, or from trust-config)"
            if method == "sigstore"
            else ""
        )
        raise ConfigError(f"cannot check signatures by {settings.trusted()}{where}: {_why(exc)}") from None
    try:
        signature = _read(data, method)
    except Exception as exc:
        raise SignatureError(f"{name}: not a model signature model-signing can read ({_why(exc)})") from None
    # The key verifier prints (to stdout) a warning about signatures made by model-signing before 1.0; stdout is
    # for --json alone.
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            manifest = verifier.verify(signature)
    except Exception as exc:
        raise SignatureError(
            f"{name}: the signature does not verify against {settings.trusted()}: {_why(exc)}. Nothing was archived."
        ) from None
    if printed.getvalue().strip():
        log.warning("%s: %s", name, printed.getvalue().strip())
    serialization = dict(manifest.serialization_type)
    if serialization.get("method") != "files" or serialization.get("hash_type") != "sha256":
        raise SignatureError(
            f"{name}: the signature holds {serialization.get('method')} digests of type "
            f"{serialization.get('hash_type')}; artifact-import holds files to per-file sha256 digests (the default "
            "of model_signing sign), so it cannot check this one while importing: import with --signature-policy "
            "off, then run model_signing verify on the destination"
        )
    digests: dict[str, str] = {}
    for descriptor in manifest.resource_descriptors():
        path = unicodedata.normalize("NFC", str(descriptor.identifier))
        if descriptor.digest.algorithm != "sha256":
            raise SignatureError(f"{name}: {path} is signed with {descriptor.digest.algorithm}, not sha256")
        if path in digests:
            raise SignatureError(f"{name}: the signature lists {path!r} twice (as two Unicode spellings)")
        digests[path] = descriptor.digest.digest_hex
    ignore = serialization.get("ignore_paths") or ()
    return SignedModel(
        method=method,
        signer=_signer(signature, settings),
        digests=digests,
        ignore_paths=tuple(str(p) for p in ignore) if isinstance(ignore, list | tuple) else (),
    )


def _read(data: bytes, method: str) -> Any:
    """The library's signature object for ``data``: a Sigstore bundle, read as the method's verifier reads it."""
    # The library reads signatures from files only; this one is small (bounded by the caller).
    with tempfile.TemporaryDirectory(prefix="artifact-import-signature-") as folder:
        path = pathlib.Path(folder, "model.sig")
        path.write_bytes(data)
        if method == "sigstore":
            from model_signing._signing import sign_sigstore  # sigstore-python: only for keyless signatures

            return sign_sigstore.Signature.read(path)
        from model_signing._signing import sign_sigstore_pb

        return sign_sigstore_pb.Signature.read(path)


def _verifier(settings: SignatureSettings) -> Any:
    """The library's verifier for the signer ``settings`` trusts."""
    if settings.method == "sigstore":
        from model_signing._signing import sign_sigstore

        return sign_sigstore.Verifier(
            identity=str(settings.identity),
            oidc_issuer=str(settings.issuer),
            trust_config=pathlib.Path(settings.trust_config) if settings.trust_config else None,
        )
    if settings.method == "key":
        from model_signing._signing import sign_ec_key

        return sign_ec_key.Verifier(pathlib.Path(str(settings.public_key)))
    from model_signing._signing import sign_certificate

    # Never the library's fallback to the system's web roots (certifi): only the chain the user trusts.
    assert settings.certificates
    return sign_certificate.Verifier([pathlib.Path(c) for c in settings.certificates])


def _signer(signature: Any, settings: SignatureSettings) -> str:
    """Who signed, as the verified signature shows it."""
    if settings.method == "sigstore":
        return f"{settings.identity} (issuer {settings.issuer})"
    if settings.method == "key":
        from cryptography.hazmat.primitives import serialization

        pem = pathlib.Path(str(settings.public_key)).read_bytes()
        key = serialization.load_pem_public_key(pem)
        spki = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        # The same fingerprint the library writes into a signature's key hint.
        return f"public key sha256:{hashlib.sha256(spki).hexdigest()}"
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    chain = signature.bundle.verification_material.x509_certificate_chain
    certificate = x509.load_der_x509_certificate(chain.certificates[0].raw_bytes)
    fingerprint = certificate.fingerprint(hashes.SHA256()).hex()
    return f"certificate {certificate.subject.rfc4514_string()} (sha256:{fingerprint})"


def _why(exc: BaseException) -> str:
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    if type(exc).__name__ == "InvalidSignature":  # cryptography's carries no message
        return "the signature does not match the statement it signs (altered)"
    return type(exc).__name__
