"""Resumable HTTP GET of one file: retries with backoff, continues with ``Range``."""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping

import attrs

from ..errors import AccessDeniedError, ConfigError, DownloadError, IntegrityError
from ..streams import closing
from .ranges import RangeIgnored, SameVersion
from .wire import BadResponse, WireClient, WireError

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_ERRORS = (WireError, asyncio.TimeoutError)


@attrs.frozen
class RetryPolicy:
    """How hard to try before a file fails.

    ``max_attempts`` counts consecutive failures: an attempt that received
    bytes resets the count, so a long download over a flaky link still
    finishes, while a dead server fails after a bounded time.
    """

    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    #: A ``Retry-After`` longer than this fails rather than sleeping for hours.
    retry_after_max: float = 120.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.retry_after_max)
        base = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return float(base * (0.5 + random.random() / 2))


@attrs.frozen
class HttpTimeouts:
    connect: float = 10.0
    #: A stalled transfer (no byte for this long) is dropped and resumed.
    read: float = 30.0
    #: A listing or revision call without an answer for this long is abandoned and tried again.
    listing: float = 60.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, read: float | None = None) -> HttpTimeouts:
        """Defaults, or what ``huggingface_hub``'s variables set: ``HF_HUB_DOWNLOAD_TIMEOUT`` (a download
        waiting for bytes: our stall timeout) and ``HF_HUB_ETAG_TIMEOUT`` (a metadata call: our listing
        deadline). An explicit ``read`` (``--stall-timeout``) wins over the variable."""
        values: dict[str, float] = {}
        for name, field in (("HF_HUB_DOWNLOAD_TIMEOUT", "read"), ("HF_HUB_ETAG_TIMEOUT", "listing")):
            raw = env.get(name)
            if raw:
                # Whole seconds: huggingface_hub reads these with int() when it is imported, and fails there.
                if not raw.strip().isdigit() or int(raw) == 0:
                    raise ConfigError(f"{name}={raw!r}: expected a whole number of seconds, at least 1")
                values[field] = float(int(raw))
        if read is not None:
            values["read"] = read
        return cls(**values)

    def wire_client(self, chunk_size: int) -> WireClient:
        """The client file bodies are downloaded with, with these timeouts."""
        return WireClient(chunk_size=chunk_size, connect_timeout=self.connect, read_timeout=self.read)


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _content_range_start(value: str | None) -> int | None:
    # "bytes 100-199/200"
    if not value or not value.startswith("bytes "):
        return None
    try:
        return int(value[6:].split("-", 1)[0])
    except ValueError:
        return None


async def stream_url(
    client: WireClient,
    url: str,
    *,
    name: str,
    source: str,
    denied_hint: str,
    headers: Mapping[str, str],
    expected_size: int | None,
    retry: RetryPolicy,
    offset: int = 0,
    end: int | None = None,
    same_version: SameVersion | None = None,
    commit: str | None = None,
    trouble: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """Yield the body of ``url`` from byte ``offset`` once, whatever drops and retries happen underneath.

    ``name`` is what errors call the file and ``source`` where it comes from;
    the URL is never put in a message because after a redirect it can carry
    a signature. ``denied_hint`` tells the user what to do on 401/403.

    With ``end``, only the bytes ``[offset, end)`` (one range of a parallel
    download, see :mod:`.ranges`); a server answering that with the whole
    file raises :class:`~.ranges.RangeIgnored`. ``same_version`` is shared
    by the ranges of one file: every response must carry the same ETag.
    ``commit``: a response naming another one (the Hub's ``X-Repo-Commit``)
    is refused. ``trouble`` is called on every failure worth a retry (the
    connections adapt to it, see :class:`~.ranges.AdaptiveLimit`).
    """
    received = offset
    failures = 0
    same_version = same_version or SameVersion(name)
    stop = end if end is not None else expected_size
    partial = end is not None and (offset > 0 or end != expected_size)
    while True:
        request_headers = dict(headers)
        if partial:
            request_headers["Range"] = f"bytes={received}-{stop - 1 if stop is not None else ''}"
        elif received:
            request_headers["Range"] = f"bytes={received}-"
        retry_after: float | None = None
        try:
            async with client.request("GET", url, request_headers) as resp:
                if resp.status in RETRYABLE_STATUS:
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                    reason = f"HTTP {resp.status}"
                elif resp.status in (401, 403):
                    gated = ", the repository is gated" if resp.headers.get("X-Error-Code") == "GatedRepo" else ""
                    raise AccessDeniedError(
                        f"{source}: {name}: access denied (HTTP {resp.status}{gated}). {denied_hint}", path=name
                    )
                elif resp.status == 416 and expected_size is not None and received == expected_size:
                    return
                elif resp.status not in (200, 206):
                    raise DownloadError(f"{name}: unexpected HTTP {resp.status} from the source", path=name)
                elif resp.status == 200 and partial:
                    raise RangeIgnored(f"{name}: the source ignores Range", path=name)
                else:
                    served = resp.headers.get("X-Repo-Commit")
                    if commit is not None and served is not None and served != commit:
                        raise IntegrityError(
                            f"{name}: the source served commit {served[:40]!r} for a request at commit {commit}",
                            path=name,
                        )
                    same_version.check(resp.headers.get("ETag"))
                    skip = 0
                    if received:
                        start = _content_range_start(resp.headers.get("Content-Range"))
                        if resp.status == 200:
                            # The server ignored Range: read past what we already have.
                            skip = received
                        elif start != received:
                            raise DownloadError(
                                f"{name}: the source answered a resume at byte {received} with range start {start}",
                                path=name,
                            )
                    # Chunks of the client's chunk size, received into one buffer and copied out once.
                    body = resp.iter_chunks()
                    async with closing(body):
                        async for chunk in body:
                            if skip:
                                if len(chunk) <= skip:
                                    skip -= len(chunk)
                                    continue
                                chunk = chunk[skip:]
                                skip = 0
                            received += len(chunk)
                            failures = 0
                            if stop is not None and received > stop:
                                raise IntegrityError(
                                    f"{name}: the source sent more than the {expected_size} bytes it listed"
                                    if end is None
                                    else f"{name}: the source sent more than the range {offset}-{end} asked for",
                                    path=name,
                                )
                            yield chunk
                    if stop is None or received == stop:
                        return
                    reason = f"connection closed after {received} of {stop} bytes"
        except _TRANSIENT_ERRORS as exc:
            reason = _describe(exc)
        except BadResponse as exc:
            # Not a network hiccup: the source answered something no retry will fix.
            raise DownloadError(f"{name}: {exc}; the source is misbehaving", path=name) from None
        failures += 1
        if trouble is not None:
            trouble()
        if failures >= retry.max_attempts:
            raise DownloadError(
                f"{name}: download failed after {failures} attempts in a row ({reason}); "
                "the source may be down, try again later",
                path=name,
            )
        delay = retry.delay(failures, retry_after)
        log.info("%s: %s; retrying in %.1fs (received %d bytes so far)", name, reason, delay, received)
        await asyncio.sleep(delay)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WireError):
        return exc.describe()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out waiting for data"
    return type(exc).__name__
