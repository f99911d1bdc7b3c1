"""``import``'s options for signed models: the policy and the signer to trust (see :mod:`..signing`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import click

from ..signing import POLICIES, SignatureSettings

T = TypeVar("T")
_NAMES = (
    "signature_policy",
    "signature_file",
    "signature_key",
    "signature_certificate",
    "signature_identity",
    "signature_issuer",
)


def signature_options(command: Callable[..., T]) -> Callable[..., T]:
    """The ``--signature-*`` options, handed to ``command`` as one ``signature`` argument (a dict of what was
    given), so the command's own signature stays short."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        given = {name: kwargs.pop(name) for name in _NAMES}
        return command(*args, signature=given, **kwargs)

    options = [
        click.option(
            "--signature-policy",
            type=click.Choice(POLICIES),
            default=None,
            help="The model's OpenSSF signature (model.sig, as NGC, Kaggle and model_signing sign): require it, "
            "check it if present, or do not look (default: if-present when a signer is given, else off). Every "
            "imported file is then held to its signed sha256; a changed, missing or unsigned file, a bad "
            "signature or another signer refuses the import. Also [verify.signature] policy.",
        ),
        click.option(
            "--signature-key",
            metavar="PEM",
            help="Trust signatures made with this public key (model_signing sign key).",
        ),
        click.option(
            "--signature-certificate",
            metavar="PEM",
            multiple=True,
            help="Trust signing certificates that chain up to these certificates (model_signing sign "
            "certificate; repeatable).",
        ),
        click.option(
            "--signature-identity",
            metavar="ID",
            help="Trust Sigstore signatures by this identity (an e-mail or workload URI); with --signature-issuer.",
        ),
        click.option("--signature-issuer", metavar="URL", help="The OIDC issuer of --signature-identity."),
        click.option(
            "--signature-file",
            metavar="PATH",
            default=None,
            help="The signature's path in the repository (default: model.sig).",
        ),
    ]
    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def signature_settings(configured: SignatureSettings, given: dict[str, Any]) -> SignatureSettings:
    """The config file's settings with the options given on the command line over them; a signer given on
    the command line replaces the config's."""
    settings = configured
    if (
        given["signature_key"]
        or given["signature_certificate"]
        or given["signature_identity"]
        or (given["signature_issuer"])
    ):
        settings = attrs.evolve(
            settings,
            public_key=given["signature_key"],
            certificates=tuple(given["signature_certificate"]),
            identity=given["signature_identity"],
            issuer=given["signature_issuer"],
        )
    if given["signature_policy"] is not None:
        settings = attrs.evolve(settings, policy=given["signature_policy"])
    if given["signature_file"] is not None:
        settings = attrs.evolve(settings, file=given["signature_file"])
    settings.check()
    return settings
