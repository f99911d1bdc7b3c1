"""Talking to S3-protocol servers (MinIO, AWS, Ceph...) through the ``minio`` client.

The client is synchronous: every call runs on a bounded thread pool. Every
failure leaves here as an :class:`ArtifactImportError` whose message names the
file and the endpoint and never carries a credential.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import urlsplit

import attrs

from .errors import ArtifactImportError, ConfigError, StorageError, StorageFileNotFoundError
from .redact import safe_url

if TYPE_CHECKING:
    from minio import Minio

T = TypeVar("T")

#: S3 error codes that mean "these credentials may not do this".
DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "InvalidClientTokenId",
        "AllAccessDisabled",
    }
)
MISSING_CODES = frozenset({"NoSuchKey", "ResourceNotFound", "NoSuchObject"})


@attrs.frozen
class S3Credentials:
    """Keys for an S3 endpoint. The secret and the token never appear in a repr."""

    access_key: str = attrs.field(repr=lambda v: v[:4] + "…" if v else "")
    secret_key: str = attrs.field(repr=False)
    session_token: str | None = attrs.field(default=None, repr=False)

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> S3Credentials | None:
        env = os.environ if env is None else env
        access, secret = env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")
        if not access or not secret:
            return None
        return cls(access, secret, env.get("AWS_SESSION_TOKEN") or None)

    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.secret_key, self.session_token, self.access_key) if s)


@attrs.frozen
class S3Endpoint:
    """Where an S3-protocol server is and how to sign for it."""

    url: str
    credentials: S3Credentials | None = None
    region: str = "us-east-1"

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"S3 endpoint {safe_url(self.url)!r} is not an http(s) URL, e.g. http://127.0.0.1:9000")
        if parts.username or parts.password or parts.query or parts.path not in ("", "/"):
            raise ConfigError("S3 endpoint must be scheme://host[:port] only; put keys in the config or environment")

    @classmethod
    def from_env(cls, env: os._Environ[str] | dict[str, str] | None = None) -> S3Endpoint:
        env = os.environ if env is None else env
        url = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
        if not url:
            raise ConfigError("no S3 endpoint: set AWS_ENDPOINT_URL (and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        return cls(
            url, S3Credentials.from_env(env), env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1"
        )

    @property
    def display(self) -> str:
        return self.url.rstrip("/")

    @property
    def secure(self) -> bool:
        return urlsplit(self.url).scheme == "https"

    def client(self, *, max_connections: int) -> Minio:
        # minio (and urllib3, pycryptodome, argon2 under it) is imported by the first client made, not by
        # every command that only reads a config or downloads into a directory.
        import urllib3
        from minio import Minio

        parts = urlsplit(self.url)
        http = urllib3.PoolManager(
            maxsize=max_connections,
            timeout=urllib3.Timeout(connect=10, read=60),
            # A few quick retries of connection failures; our callers report the rest.
            retries=urllib3.Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        creds = self.credentials
        return Minio(
            parts.netloc,
            access_key=creds.access_key if creds else None,
            secret_key=creds.secret_key if creds else None,
            session_token=creds.session_token if creds else None,
            secure=parts.scheme == "https",
            region=self.region,
            http_client=http,
        )

    def secrets(self) -> tuple[str, ...]:
        return self.credentials.secrets() if self.credentials else ()


def redact(text: str, secrets: Iterable[str]) -> str:
    """Remove secrets and anything that looks like a request signature from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return re.sub(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s]+", r"\1***", text)


class S3Bridge:
    """Runs ``minio`` calls on a bounded pool and translates their failures.

    ``denied`` and ``failed`` are the error classes to raise: a destination
    raises storage errors, a source raises source errors.
    """

    def __init__(
        self,
        endpoint: S3Endpoint,
        *,
        threads: int = 8,
        denied: type[ArtifactImportError] = StorageError,
        failed: type[ArtifactImportError] = StorageError,
        missing: type[ArtifactImportError] = StorageFileNotFoundError,
    ) -> None:
        self.endpoint = endpoint
        self.client = endpoint.client(max_connections=threads)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="s3")
        self._denied, self._failed, self._missing = denied, failed, missing
        #: Whether the server honours If-None-Match / If-Match on PUT; None until the first lock finds out.
        self.conditional_writes: bool | None = None

    async def call(self, what: str, fn: Callable[..., T], *args: object, **kwargs: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except ArtifactImportError:
            raise
        except Exception as exc:
            raise self.translate(exc, what) from None

    def translate(self, exc: BaseException, what: str) -> ArtifactImportError:
        import urllib3
        from minio.error import InvalidResponseError, MinioException, S3Error, ServerError

        where = self.endpoint.display
        if isinstance(exc, S3Error):
            if exc.code in DENIED_CODES:
                message = (
                    f"{what}: {where} refused the request ({exc.code}); check the access key and secret "
                    "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or the config file) and their permissions"
                )
                return self._denied(self._clean(message), path=what)
            if exc.code == "NoSuchBucket":
                return self._failed(
                    self._clean(f"{what}: bucket {exc.bucket_name!r} does not exist on {where}"), path=what
                )
            if exc.code in MISSING_CODES:
                return self._missing(self._clean(f"{what}: not found on {where}"), path=what)
            return self._failed(self._clean(f"{what}: {where} answered {exc.code}: {exc.message}"), path=what)
        if isinstance(exc, ServerError):
            return self._failed(f"{what}: {where} answered HTTP {exc.status_code}", path=what)
        if isinstance(exc, InvalidResponseError):
            return self._failed(f"{what}: {where} sent a response that is not S3", path=what)
        if isinstance(exc, urllib3.exceptions.HTTPError | OSError | MinioException):
            return self._failed(f"{what}: cannot reach {where} ({_root_cause(exc)})", path=what)
        return self._failed(f"{what}: unexpected {type(exc).__name__} talking to {where}", path=what)

    def _clean(self, message: str) -> str:
        return redact(message, self.endpoint.secrets())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _root_cause(exc: BaseException) -> str:
    """The innermost exception's class: messages of urllib3 errors quote URLs."""
    seen = exc
    while True:
        inner = getattr(seen, "reason", None) or seen.__cause__ or seen.__context__
        if not isinstance(inner, BaseException) or inner is seen:
            break
        seen = inner
    return type(seen).__name__
