"""Whether an import must carry a model signature, and whose signature it trusts."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from pathlib import PurePosixPath

import attrs

from ..errors import ConfigError

#: ``require``: refuse a model without a signature; ``if-present``: check one when the model has it;
#: ``off``: never look.
POLICIES = ("require", "if-present", "off")
#: Where ``model_signing sign`` writes the signature, and where NGC, Kaggle and the Hub's signed models keep it.
DEFAULT_SIGNATURE_FILE = "model.sig"
_SIGNERS = (
    "--signature-key PEM, --signature-certificate PEM (the chain) or --signature-identity with --signature-issuer"
)


def _paths(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen
class SignatureSettings:
    """The signature policy and the one signer trusted: a public key, a certificate chain, or a Sigstore
    identity with its OIDC issuer.

    ``policy`` None means: ``if-present`` when a signer is given, else ``off``
    (a model with a signature is not refused because nobody said whom to trust).
    """

    policy: str | None = None
    #: The signature's path in the repository.
    file: str = DEFAULT_SIGNATURE_FILE
    #: PEM file of the signer's public key (elliptic curve, as ``model_signing sign key`` uses).
    public_key: str | None = None
    #: PEM files of the certificate chain up to the trusted root (``model_signing sign certificate``).
    certificates: tuple[str, ...] = attrs.field(default=(), converter=_paths)
    #: Sigstore keyless signing: the identity (an e-mail or a workload URI) and the issuer that vouched for it.
    identity: str | None = None
    issuer: str | None = None
    #: A Sigstore client trust configuration (JSON) instead of the public-good instance's (fetched by TUF).
    trust_config: str | None = None

    @property
    def method(self) -> str | None:
        """``key``, ``certificate`` or ``sigstore``: how the signer is identified; None if no signer is given."""
        if self.public_key:
            return "key"
        if self.certificates:
            return "certificate"
        if self.identity or self.issuer:
            return "sigstore"
        return None

    @property
    def effective_policy(self) -> str:
        if self.policy is not None:
            return self.policy
        return "if-present" if self.method is not None else "off"

    @property
    def active(self) -> bool:
        return self.effective_policy != "off"

    def trusted(self) -> str:
        """The signer trusted, in words (for messages)."""
        if self.method == "key":
            return f"the public key {self.public_key}"
        if self.method == "certificate":
            return f"the certificate chain {', '.join(self.certificates)}"
        if self.method == "sigstore":
            return f"the Sigstore identity {self.identity} (issuer {self.issuer})"
        return "no signer"

    def check(self) -> None:
        """Refuse, before anything is fetched, settings that cannot check a signature."""
        policy = self.effective_policy
        if policy not in POLICIES:
            raise ConfigError(f"unknown signature policy {policy!r} (known: {', '.join(POLICIES)})")
        path = PurePosixPath(self.file)
        if not self.file or path.is_absolute() or ".." in path.parts or str(path) != self.file:
            raise ConfigError(f"signature file {self.file!r}: expected a plain path in the repository, e.g. model.sig")
        given = [m for m in ("key", "certificate", "sigstore") if self._gives(m)]
        if len(given) > 1:
            raise ConfigError(f"give one signer to trust, not {' and '.join(given)}: {_SIGNERS}")
        if policy == "off":
            return
        if not given:
            raise ConfigError(
                f"--signature-policy {policy} needs the signer to trust: {_SIGNERS} (or [verify.signature] in the "
                "config file)"
            )
        if self.method == "sigstore" and not (self.identity and self.issuer):
            raise ConfigError(
                "a Sigstore signer is an identity and the OIDC issuer that vouched for it: give both "
                "--signature-identity and --signature-issuer (e.g. https://accounts.google.com)"
            )
        for path_name in (self.public_key, *self.certificates, self.trust_config):
            if path_name is not None and not os.path.isfile(path_name):
                raise ConfigError(f"{path_name}: no such file (the signer to trust for model signatures)")
        if importlib.util.find_spec("model_signing") is None:
            raise ConfigError(
                "checking model signatures needs the model-signing library: pip install 'artifact-import[signing]'"
            )

    def _gives(self, method: str) -> bool:
        if method == "key":
            return bool(self.public_key)
        if method == "certificate":
            return bool(self.certificates)
        return bool(self.identity or self.issuer)
