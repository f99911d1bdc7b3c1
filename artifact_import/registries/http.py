"""Resumable HTTP GET of one file: retries with backoff, continues with ``Range``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import attrs

from ..errors import AccessDeniedError, ConfigError, DownloadError, IntegrityError
from ..streams import closing
from .ranges import RangeIgnored, SameVersion
from .wire import BadResponse, Response, TooSlow, WireClient, WireError, content_length_of

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds a body that announced more than the listed size is given to send it, once every listed byte is in.
_MORE_GRACE = 1.0
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
    #: A transfer averaging fewer bytes a second than this over ``rate_window`` seconds is dropped (0: never).
    #: A source that trickles a byte every few seconds never trips the stall timeout; this bounds it. The
    #: default is far below any real link, even shared by 16 connections (100 KB/s gives each 6 KB/s).
    min_rate: float = 1024.0
    rate_window: float = 30.0

    def __attrs_post_init__(self) -> None:
        if self.min_rate < 0 or self.rate_window <= 0:
            raise ConfigError("the minimum rate must be 0 or more, over a window of more than 0 seconds")

    @property
    def answer(self) -> float:
        """Seconds a request may take to connect and receive the whole status line and headers."""
        return self.connect + self.read

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], *, read: float | None = None, min_rate: float | None = None
    ) -> HttpTimeouts:
        """Defaults, or what ``huggingface_hub``'s variables set: ``HF_HUB_DOWNLOAD_TIMEOUT`` (a download
        waiting for bytes: our stall timeout) and ``HF_HUB_ETAG_TIMEOUT`` (a metadata call: our listing
        deadline). An explicit ``read`` (``--stall-timeout``) wins over the variable; ``min_rate``
        (``--min-rate``) replaces the default minimum rate."""
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
        if min_rate is not None:
            values["min_rate"] = min_rate
        return cls(**values)

    def wire_client(self, chunk_size: int) -> WireClient:
        """The client file bodies are downloaded with, with these timeouts."""
        return WireClient(
            chunk_size=chunk_size,
            connect_timeout=self.connect,
            read_timeout=self.read,
            answer_timeout=self.answer,
            min_rate=self.min_rate,
            rate_window=self.rate_window,
        )


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only for a Retry-After date: loading it is a start-up cost every import paid

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


def same_origin(a: str, b: str) -> bool:
    """Whether two URLs share scheme, host and port (default ports spelled or not): where a token may go."""
    return _origin_of(a) is not None and _origin_of(a) == _origin_of(b)


def _origin_of(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(str(url))
        scheme = parts.scheme.lower()
        port = parts.port or {"http": 80, "https": 443}.get(scheme)
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return scheme, parts.hostname.lower(), port


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
    timeouts: HttpTimeouts | None = None,
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

    A source cannot hold the transfer: an answer must come within
    ``timeouts.answer`` seconds, the body must average ``timeouts.min_rate``
    bytes a second (transfers below it are dropped and resumed, and after
    ``retry.max_attempts`` such drops the file fails), reading stops at the
    listed size whatever ``Content-Length`` announced, and an encoded body
    (``Content-Encoding``) is refused at once (see the client's settings,
    :meth:`HttpTimeouts.wire_client`).
    """
    timeouts = timeouts or HttpTimeouts()
    received = offset
    failures = 0
    #: Attempts dropped for being too slow: never reset by the bytes they brought (a trickle brings some).
    slow = 0
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
                    _check_encoding(resp.headers, name)
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
                    # Bytes of this body we want: up to the listed size, however many its Content-Length claims.
                    wanted = skip + stop - received if stop is not None else None
                    # Chunks of the client's chunk size, received into one buffer and copied out once.
                    body = resp.iter_chunks(until=wanted)
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
                            if stop is not None and received == stop and wanted is not None:
                                promised = content_length_of(resp.headers)
                                if await _more_than_listed(resp, promised, wanted):
                                    raise IntegrityError(
                                        f"{name}: the source sent more than the {expected_size} bytes it listed"
                                        if end is None
                                        else f"{name}: the source sent more than the range {offset}-{end} asked for",
                                        path=name,
                                    )
                                return
                    if stop is None or received == stop:
                        return
                    reason = f"connection closed after {received} of {stop} bytes"
        except TooSlow as exc:
            slow += 1
            reason = str(exc)
            if slow >= retry.max_attempts:
                raise DownloadError(
                    f"{name}: the source sent {exc} ({slow} times); giving up on it. A link that slow "
                    "needs a lower minimum rate (--min-rate)",
                    path=name,
                ) from None
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


def _check_encoding(headers: Mapping[str, str], name: str) -> None:
    """Refuse an encoded body at once: its bytes are not the file's, so sizes, digests and ``Range`` offsets
    would all be wrong (we ask for ``Accept-Encoding: identity`` and never decompress)."""
    encoding = headers.get("Content-Encoding", "").strip()
    if encoding.lower() not in ("", "identity"):
        shown = "".join(c for c in encoding[:40] if c.isprintable())
        raise DownloadError(
            f"{name}: the source sent the file encoded (Content-Encoding: {shown}) although the bytes as stored "
            "were asked for; refusing it, the source is misbehaving",
            path=name,
        )


async def _more_than_listed(resp: Response, promised: int | None, wanted: int) -> bytes:
    """Bytes past the listed size that a response announcing more (``promised``) sends within a moment: a
    listing that lies sends them at once (refused by the caller, with a clear message); a source that holds
    the connection open instead is not waited for."""
    if promised is None or promised <= wanted:
        return b""
    with contextlib.suppress(WireError, TimeoutError):
        return await resp.next_chunk(_MORE_GRACE) or b""
    return b""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, WireError):
        return exc.describe()
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out waiting for data"
    return type(exc).__name__
