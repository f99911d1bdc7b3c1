"""Secrets out of anything shown: URLs without their credentials and signatures.

A URL can carry a password (``scheme://user:secret@host``) or a signature in
its query (a CDN's ``Signature=``/``X-Amz-Signature=``, a presigned S3 URL).
Every URL that reaches an error, a log line or a traceback goes through here.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

# Schemes whose URLs carry credentials; not hf:// or s3:// URIs, where "NAME@REV" is a revision.
_NETWORK = r"\b(?:https?|ftps?|rediss?|valkeys?|wss?|unix)://"
# scheme://userinfo@  -> scheme://***@
_USERINFO = re.compile(rf"({_NETWORK})[^/\s@'\"]+@")
# A URL's query string, whatever it holds.
_QUERY = re.compile(rf"({_NETWORK}[^\s?'\"]*)\?[^\s'\"]*")
# Signature-like parameters outside a URL (headers, reprs of request objects).
_SIGNED = re.compile(r"(?i)\b(X-Amz-(?:Signature|Credential|Security-Token)|Signature|Policy|Key-Pair-Id)=[^&\s'\"]+")


def safe_url(url: str) -> str:
    """``url`` without its user, password and query: what a message may quote."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    if parts.username or parts.password:
        netloc = f"***@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "…" if parts.query else "", ""))


def redact_text(text: str) -> str:
    """``text`` with the credentials and query strings of the URLs in it, and signature parameters, masked."""
    text = _USERINFO.sub(r"\1***@", text)
    text = _QUERY.sub(r"\1?…", text)
    return _SIGNED.sub(r"\1=***", text)


class RedactingFormatter(logging.Formatter):
    """A formatter whose every line, tracebacks included, goes through :func:`redact_text`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
