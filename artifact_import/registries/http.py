"""Resumable HTTP GET of one file: retries with backoff, continues with ``Range``."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Mapping

import aiohttp
import attrs
from yarl import URL

from ..errors import AccessDeniedError, ConfigError, DownloadError, IntegrityError
from ..streams import closing, rechunk
from ..units import human_bytes
from .ranges import RangeIgnored, SameVersion

log = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
#: Seconds a body that announced more than the listed size is given to send it, once every listed byte is in.
_MORE_GRACE = 1.0
_TRANSIENT_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, asyncio.TimeoutError)


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

    def client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=self.connect, sock_read=self.read)


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


def same_origin(a: str | URL, b: str | URL) -> bool:
    """Whether two URLs share scheme, host and port (default ports spelled or not): where a token may go."""
    try:
        return URL(str(a)).origin() == URL(str(b)).origin()
    except ValueError:
        return False


async def stream_url(
    session: aiohttp.ClientSession,
    url: str,
    *,
    name: str,
    source: str,
    denied_hint: str,
    headers: Mapping[str, str],
    expected_size: int | None,
    chunk_size: int,
    retry: RetryPolicy,
    timeouts: HttpTimeouts | None = None,
    offset: int = 0,
    end: int | None = None,
    same_version: SameVersion | None = None,
    commit: str | None = None,
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
    is refused.

    A source cannot hold the transfer: an answer must come within
    ``timeouts.answer`` seconds, the body must average ``timeouts.min_rate``
    bytes a second (transfers below it are dropped and resumed, and after
    ``retry.max_attempts`` such drops the file fails), reading stops at the
    listed size whatever ``Content-Length`` announced, and an encoded body
    (``Content-Encoding``) is refused at once.
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
            async with asyncio.timeout(timeouts.answer):
                resp = await session.get(url, headers=request_headers, allow_redirects=True, read_bufsize=chunk_size)
            async with resp:
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
                    _check_encoding(resp, name)
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
                    meter = _RateMeter(timeouts.min_rate, timeouts.rate_window)
                    body = rechunk(_pieces(resp.content, meter, wanted, resp.content_length), chunk_size)
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
        except _TooSlow as exc:
            slow += 1
            reason = exc.reason
            if slow >= retry.max_attempts:
                raise DownloadError(
                    f"{name}: the source sent {exc.reason} ({slow} times); giving up on it. A link that slow "
                    "needs a lower minimum rate (--min-rate)",
                    path=name,
                ) from None
        except _TRANSIENT_ERRORS as exc:
            reason = _describe(exc)
        except aiohttp.ClientError as exc:
            # Not a network hiccup: the source answered something no retry will fix.
            raise DownloadError(f"{name}: {_hostile(exc)}; the source is misbehaving", path=name) from None
        failures += 1
        if failures >= retry.max_attempts:
            raise DownloadError(
                f"{name}: download failed after {failures} attempts in a row ({reason}); "
                "the source may be down, try again later",
                path=name,
            )
        delay = retry.delay(failures, retry_after)
        log.info("%s: %s; retrying in %.1fs (received %d bytes so far)", name, reason, delay, received)
        await asyncio.sleep(delay)


def _check_encoding(resp: aiohttp.ClientResponse, name: str) -> None:
    """Refuse an encoded body at once: its bytes are not the file's, so sizes, digests and ``Range`` offsets
    would all be wrong (we ask for ``Accept-Encoding: identity`` and never decompress)."""
    encoding = resp.headers.get("Content-Encoding", "").strip()
    if encoding.lower() not in ("", "identity"):
        shown = "".join(c for c in encoding[:40] if c.isprintable())
        raise DownloadError(
            f"{name}: the source sent the file encoded (Content-Encoding: {shown}) although the bytes as stored "
            "were asked for; refusing it, the source is misbehaving",
            path=name,
        )


class _TooSlow(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _RateMeter:
    """Raises :class:`_TooSlow` when a body averages under ``min_rate`` bytes a second over a window.

    Checked as pieces arrive; a source sending nothing at all is the stall timeout's (``sock_read``), so the
    longest a trickle lasts is about one window plus one stall timeout.
    """

    def __init__(self, min_rate: float, window: float) -> None:
        self.min_rate = min_rate
        self.window = window
        self.start = time.monotonic()
        self.bytes = 0

    def add(self, count: int) -> None:
        if not self.min_rate:
            return
        self.bytes += count
        now = time.monotonic()
        elapsed = now - self.start
        if elapsed < self.window:
            return
        if self.bytes < self.min_rate * elapsed:
            raise _TooSlow(
                f"{self.bytes} bytes in {elapsed:.0f}s, under the minimum rate of {human_bytes(int(self.min_rate))}/s"
            )
        self.start, self.bytes = now, 0


async def _pieces(
    content: aiohttp.StreamReader, meter: _RateMeter, wanted: int | None, promised: int | None
) -> AsyncIterator[bytes]:
    """The body as aiohttp buffered it, piece by piece, until ``wanted`` bytes (None: its end).

    ``iter_chunked(n)`` joins pieces into a new ``n``-byte object on every
    read and :func:`rechunk` would join again: measured on loopback, the
    extra copy and its allocations cost more CPU than receiving the bytes
    (``benchmarks/README.md``). Here each byte is copied once, by rechunk.

    Reading stops once ``wanted`` bytes are in, without waiting for the end
    a larger ``Content-Length`` (``promised``) announces for more than
    :data:`_MORE_GRACE` seconds; bytes beyond ``wanted`` that arrive by then
    are handed on, for the caller to refuse.
    """
    taken = 0
    async for piece, _ in content.iter_chunks():
        meter.add(len(piece))
        taken += len(piece)
        yield piece
        if wanted is not None and taken >= wanted:
            if taken == wanted and promised is not None and promised > wanted:
                # More was announced: a listing that lies sends it at once (refused by the caller, with a clear
                # message); a source that holds the connection open instead is not waited for past a moment.
                with contextlib.suppress(TimeoutError, aiohttp.ClientPayloadError):
                    async with asyncio.timeout(_MORE_GRACE):
                        extra = await content.readany()
                        if extra:
                            yield extra
            return


def _hostile(exc: aiohttp.ClientError) -> str:
    """What a malformed answer was, without the URL (it may carry a signature)."""
    if isinstance(exc, aiohttp.TooManyRedirects):
        return "it redirected too many times (a redirect loop)"
    if isinstance(exc, aiohttp.NonHttpUrlRedirectClientError | aiohttp.InvalidUrlRedirectClientError):
        return "it redirected to a URL that is not http(s)"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"its response is not valid HTTP ({type(exc).__name__}, status {exc.status})"
    return f"its answer could not be used ({type(exc).__name__})"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out waiting for data"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "connection dropped mid-transfer"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port}"
    # Other aiohttp messages may quote the URL; the class name is enough.
    return type(exc).__name__
