"""HTTP/1.1 GETs whose bodies are received straight into one buffer per connection: the download path.

aiohttp receives every socket read into a new ``bytes``, its parser copies
each body piece into another, and a chunk of a megabyte was then joined from
those: measured on loopback from nginx, 1.7 CPU-seconds per GiB of body,
where asyncio's ``BufferedProtocol`` receiving (``recv_into``) into one
reused buffer and copying each full megabyte out once takes 0.35
(``benchmarks/README.md``). The bodies of files, nearly all the bytes an
import moves, come through here, and so do the hub's listings: an import
does not load aiohttp at all (about 0.1 CPU-second less at every start).

Deliberately small: GET and HEAD, HTTP/1.1 keep-alive, bodies framed by
``Content-Length``, ``chunked`` or the end of the connection, TLS through
asyncio's ``ssl``, redirects followed as aiohttp follows them (at most 10,
http(s) only, ``Authorization`` dropped on the way to another origin). No
proxies and no decompression: the aiohttp session it replaces used neither
(we ask for ``identity`` and hand the bytes on as sent).

What a hostile server can send is bounded: a head larger than
:data:`MAX_HEAD`, a malformed status line or header, a chunk-size line
that is not one, conflicting lengths: :class:`BadResponse`, never a hang or
an unbounded buffer. Bytes beyond a response's length are never taken as
the next response: the connection is closed instead of reused.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import ssl
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from typing import cast
from urllib.parse import quote, urljoin, urlsplit

from multidict import CIMultiDict, CIMultiDictProxy

#: Status line and headers of one response, at most.
MAX_HEAD = 64 * 1024
#: A chunk-size line (with its extensions) or a trailer line, at most.
_MAX_LINE = 8 * 1024
MAX_REDIRECTS = 10
#: Completed chunks a response holds for its reader before the connection stops reading.
_QUEUED_CHUNKS = 2
#: Body bytes the kernel gathers on a fast connection before the loop is woken to receive them
#: (``SO_RCVLOWAT``): one read of this much, rather than two or three as they trickle in, halves the reads
#: and what each costs in the loop and the kernel (``benchmarks/README.md``). Never more than the body bytes
#: still to come.
RECV_LOW_WATER = 256 * 1024
#: A read at least this large says the bytes come fast enough for :data:`RECV_LOW_WATER` to cost no latency.
_FAST_READ = 64 * 1024
#: Seconds without a read after which a raised low-water mark is lowered again and what the kernel holds is
#: received: a source that slowed or stopped is judged (stall, minimum rate) on every byte it sent. At most a
#: quarter of the stall timeout, so the bytes are in before a stall is declared and a resume starts after them.
_LOW_WATER_GRACE = 0.5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FIELD_VALUE = re.compile(rb"[^\x00-\x08\x0a-\x1f\x7f]*")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
#: Characters a request target keeps as they are; the rest (spaces, controls, non-ASCII) is percent-encoded.
_TARGET_SAFE = "!#$%&'()*+,/:;=?@[]~"


class WireError(Exception):
    """A transfer that failed the way networks fail: a retry may succeed."""

    def describe(self) -> str:
        return "connection dropped mid-transfer"


class ConnectFailed(WireError):
    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"cannot connect to {host}:{port}")
        self.host = host
        self.port = port

    def describe(self) -> str:
        return str(self)


class TlsFailed(ConnectFailed):
    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(host, port)
        self.args = (f"TLS handshake with {host}:{port} failed ({reason})",)

    def describe(self) -> str:
        return str(self)


class TooSlow(WireError):
    """A body arriving slower than the client's minimum rate: a trickle the stall timeout never trips."""

    def __init__(self, received: int, seconds: float, min_rate: float) -> None:
        super().__init__(f"{received} bytes in {seconds:.0f}s, under the minimum rate of {min_rate:g} bytes/s")
        self.received, self.seconds, self.min_rate = received, seconds, min_rate

    def describe(self) -> str:
        return str(self)


class Dropped(WireError):
    """The connection ended before the response did."""


class BadResponse(Exception):
    """What the server sent is not HTTP we accept: no retry will fix it."""


class TooLarge(BadResponse):
    """A body read whole (:meth:`Response.read`) is longer than its caller allows."""


class Stalled(WireError, TimeoutError):
    """No byte arrived for the read timeout."""

    def describe(self) -> str:
        return "timed out waiting for data"


_Origin = tuple[str, str, int]


def _origin(url: str) -> tuple[_Origin, str]:
    """(scheme, host, port) of ``url`` and its request target (path and query, percent-encoded)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadResponse("it redirected to a URL that is not http(s)")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise BadResponse("it redirected to a URL with an invalid port") from None
    target = quote(parts.path or "/", safe=_TARGET_SAFE)
    if parts.query:
        target += "?" + quote(parts.query, safe=_TARGET_SAFE)
    return (scheme, parts.hostname, port), target


class _Connection(asyncio.BufferedProtocol):
    """One keep-alive connection; receives a response's head, then its body a chunk at a time."""

    def __init__(self, client: WireClient, origin: _Origin) -> None:
        self.client = client
        self.origin = origin
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        size = max(client.chunk_size, MAX_HEAD)
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self._fill = 0
        self._state = "idle"  # idle | head | body | chunked | done | closed
        self._head_ready: asyncio.Future[None] | None = None
        self._scan_from = 0
        self._head_end = 0
        self.closed = False
        self.reusable = False
        #: Requests sent on this connection.
        self.requests = 0
        self._queue: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._left: int | None = None  # body bytes still to receive (None: until the connection ends)
        self._paused = False
        self._head_only = False
        self.last_activity = 0.0
        # The body's rate: bytes since _rate_from (reset after each window it kept the minimum, and on resume).
        self._rate_from = 0.0
        self._rate_bytes = 0
        #: Body bytes after which what arrived is handed on at once (the listed size: see Response.iter_chunks).
        self._until: int | None = None
        self._body_got = 0
        # chunked bodies: raw bytes are received into _raw, decoded into _buf
        self._raw: bytearray | None = None
        self._chunk_left = 0
        self._chunk_state = "size"  # size | data | crlf | trailer
        self._line = bytearray()
        # The socket's SO_RCVLOWAT (1: the kernel's default), and whether the transport's socket takes it.
        self._low_water = 1
        self._low_water_settable = True
        self._stall_timeout = client.read_timeout
        self._low_water_timer: asyncio.TimerHandle | None = None

    # --- asyncio.BufferedProtocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, whatever its class: uvloop's (Backend.AI's storage proxy can run on it) are not
        # subclasses of asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        state = self._state
        if state == "head":
            return self._view[self._fill : MAX_HEAD]
        if state == "body":
            end = self.client.chunk_size if self._left is None else min(self.client.chunk_size, self._fill + self._left)
            return self._view[self._fill : end]
        if state == "chunked":
            assert self._raw is not None
            return memoryview(self._raw)
        if state == "parsed" and self._fill < len(self._buf):
            # Reading is paused once the head is complete; a transport that still hands over bytes adds them
            # to what follows the head.
            return self._view[self._fill :]
        # Between responses nothing should arrive; whatever does is received and makes the connection unusable.
        return self._view[: MAX_HEAD]

    def buffer_updated(self, nbytes: int) -> None:
        self.last_activity = self.loop.time()
        self._rate_bytes += nbytes
        if self.client.meter is not None:
            self.client.meter(nbytes)
        state = self._state
        if state == "body":
            self._fill += nbytes
            self._body_got += nbytes
            if self._left is not None:
                self._left -= nbytes
            if self._fill >= self.client.chunk_size or self._left == 0 or self._reached_until():
                self._emit()
            if self._left == 0:
                self._body_done()
            elif nbytes >= _FAST_READ:
                self._raise_low_water()
            elif self._low_water > 1:
                self._set_low_water(1)  # slower: every byte handed on as it comes
        elif state == "head":
            self._fill += nbytes
            self._find_head()
        elif state == "parsed":
            self._fill += nbytes
        elif state == "chunked":
            assert self._raw is not None
            try:
                self._decode_chunked(memoryview(self._raw)[:nbytes])
            except BadResponse as exc:
                self._fail(exc)
        else:
            self.reusable = False
            self._close()

    def eof_received(self) -> bool | None:
        self._ended(None)
        return None

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ended(exc)

    # --- receiving ----------------------------------------------------------------------------------------

    def _find_head(self) -> None:
        end = self._buf.find(b"\r\n\r\n", max(0, self._scan_from - 3), self._fill)
        if end < 0:
            self._scan_from = self._fill
            if self._fill >= MAX_HEAD:
                self._fail(BadResponse(f"its response head is larger than {MAX_HEAD // 1024} KiB"))
            return
        self._head_end = end + 4
        self._state = "parsed"
        self._pause()  # the reader decides how the body is framed before more is received
        if self._head_ready is not None and not self._head_ready.done():
            self._head_ready.set_result(None)

    def _emit(self) -> None:
        if self._fill:
            self._queue.append(bytes(self._view[: self._fill]))
            self._fill = 0
            if len(self._queue) >= _QUEUED_CHUNKS:
                self._pause()
            self._wake()

    def _raise_low_water(self) -> None:
        """Wake for this body's next bytes only once :data:`RECV_LOW_WATER` of them (or all still to come) are
        in. Bounded by the bytes still to come, and by what the reader waits for (``until``), so the mark can
        always be reached: a source that stops short is still seen as stalled, not waited on in the kernel."""
        want = RECV_LOW_WATER
        if self._left is not None:
            want = min(want, self._left)
        if self._until is not None:
            want = min(want, self._until - self._body_got)
        self._set_low_water(want)

    def _set_low_water(self, nbytes: int) -> None:
        nbytes = max(nbytes, 1)
        if nbytes == self._low_water or not self._low_water_settable or self.transport is None:
            return
        # Asked of the transport each time, not kept: a socket object held here would outlive the connection.
        sock = self.transport.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, nbytes)
        except (OSError, AttributeError, TypeError):
            self._low_water_settable = False  # a transport that does not take it: reads as they come
            return
        self._low_water = nbytes
        if nbytes > 1 and self._low_water_timer is None:
            self._low_water_timer = self.loop.call_later(self._grace(), self._check_low_water)
        elif nbytes == 1:
            self._stop_low_water_timer()

    def _stop_low_water_timer(self) -> None:
        # The timer holds the connection: cancelled as soon as it has nothing to watch, so a finished or
        # closed connection is not kept alive by it (the client tracks its open connections weakly).
        timer, self._low_water_timer = self._low_water_timer, None
        if timer is not None:
            timer.cancel()

    def _check_low_water(self) -> None:
        self._low_water_timer = None
        if self._low_water <= 1 or self.closed:
            return
        idle = self.loop.time() - self.last_activity
        grace = self._grace()
        if idle >= grace:
            self._set_low_water(1)
        else:
            self._low_water_timer = self.loop.call_later(grace - idle, self._check_low_water)

    def _grace(self) -> float:
        return min(_LOW_WATER_GRACE, self._stall_timeout / 4)

    def _reached_until(self) -> bool:
        until = self._until
        return until is not None and self._body_got >= until

    def _body_done(self) -> None:
        self._state = "done"
        self._set_low_water(1)  # what follows (the next head, a close) is seen at once
        self._wake()

    def _decode_chunked(self, data: memoryview) -> None:
        at = 0
        size = len(data)
        chunk_size = self.client.chunk_size
        while at < size and self._state == "chunked":
            if self._chunk_state == "data":
                if self._fill >= chunk_size:
                    self._emit()
                take = min(self._chunk_left, size - at, chunk_size - self._fill)
                self._view[self._fill : self._fill + take] = data[at : at + take]
                self._fill += take
                self._chunk_left -= take
                at += take
                if self._fill >= chunk_size:
                    self._emit()
                if self._chunk_left == 0:
                    self._chunk_state = "crlf"
                continue
            window = bytes(data[at : min(size, at + _MAX_LINE + 1)])
            found = window.find(b"\n")
            newline = at + found if found >= 0 else -1
            stop = newline + 1 if newline >= 0 else at + len(window)
            self._line += data[at:stop]
            at = stop
            if len(self._line) > _MAX_LINE:
                raise BadResponse("a chunk-size or trailer line of its response is too long")
            if newline < 0:
                return
            line = bytes(self._line).rstrip(b"\r\n")
            self._line.clear()
            if self._chunk_state == "crlf":
                if line:
                    raise BadResponse("its chunked body is malformed (no line end after a chunk)")
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise BadResponse("its chunked body is malformed (a chunk size that is not one)")
                self._chunk_left = int(m[1], 16)
                self._chunk_state = "data" if self._chunk_left else "trailer"
            elif not line:  # the empty line that ends the trailers
                self._emit()
                self._body_done()
                if at < size:
                    self.reusable = False

    def _ended(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.reusable = False
        self._stop_low_water_timer()
        self.client._forget(self)
        state = self._state
        if state == "body" and self._left is None and exc is None:
            self._emit()  # a body that ends with its connection: this is its end
            self._state = "done"
        elif state == "head":
            # Nothing at all on a kept-alive connection: the server had closed it while it was idle.
            self._error = _ClosedBeforeResponse() if self._fill == 0 else Dropped("connection closed mid-head")
            self._state = "closed"
            self._head_failed(self._error)
        elif state in ("body", "chunked"):
            self._emit()  # what arrived is handed on before the error
            self._error = Dropped("connection closed before the response ended")
            self._state = "closed"
        # "parsed": start_body sees `closed` and decides; "idle", "done": nothing was expected.
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        self._error = exc
        self._state = "closed"
        self._head_failed(exc)
        self._wake()
        self._close()

    def _head_failed(self, exc: BaseException) -> None:
        ready = self._head_ready
        if ready is not None and not ready.done():
            ready.set_exception(exc)
            ready.exception()  # whoever waits still gets it; nobody waiting (a request given up) is no error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _pause(self) -> None:
        if not self._paused and self.transport is not None and not self.closed:
            self._paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            # Time spent paused by our own reader is not the source's slowness.
            self._rate_from, self._rate_bytes = self.loop.time(), 0
            self.transport.resume_reading()

    def _close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    # --- one exchange -------------------------------------------------------------------------------------

    async def send(self, method: str, target: str, host: str, headers: Mapping[str, str]) -> None:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
        for name, value in headers.items():
            if name.lower() == "host":
                continue
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
                raise ValueError(f"header {name!r} has characters a header cannot hold")
            lines.append(f"{name}: {value}")
        self._state = "head"
        self._fill = 0
        self._scan_from = 0
        self._head_end = 0
        self._head_only = method == "HEAD"
        self._set_low_water(1)
        self._queue.clear()
        self._error = None
        self.last_activity = self.loop.time()
        self._head_ready = self.loop.create_future()
        self.requests += 1
        self._resume()
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    async def head(self, read_timeout: float) -> tuple[int, str, CIMultiDictProxy[str], bool]:
        """The response's status, reason, headers and HTTP/1.0-ness, once they arrived."""
        assert self._head_ready is not None
        while True:
            left = read_timeout - (self.loop.time() - self.last_activity)
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that arrives as
                # the awaited future completes, and the cancelled reader then waits for ever.
                async with asyncio.timeout(max(left, 0.0)):
                    await asyncio.shield(self._head_ready)
            except TimeoutError:
                if self.loop.time() - self.last_activity >= read_timeout:
                    self._close()
                    raise Stalled("no response within the read timeout") from None
                continue
            break
        status, reason, headers, old = _parse_head(bytes(self._view[: self._head_end]))
        if 100 <= status < 200:
            # An interim response (100 Continue, 103 Early Hints): the real one follows.
            rest = bytes(self._view[self._head_end : self._fill])
            self._fill = len(rest)
            self._view[: self._fill] = rest
            self._state = "head"
            self._scan_from = 0
            self._head_end = 0
            self._head_ready = self.loop.create_future()
            self._resume()
            if self._fill:
                self._find_head()
            return await self.head(read_timeout)
        return status, reason, headers, old

    def start_body(self, status: int, headers: CIMultiDictProxy[str], old: bool) -> None:
        """Frame the body after the head, and start receiving it."""
        excess = bytes(self._view[self._head_end : self._fill])
        self._fill = 0
        self._rate_from, self._rate_bytes = self.loop.time(), len(excess)
        self._until = None
        self._body_got = 0
        connection = {t.strip().lower() for t in headers.get("Connection", "").split(",")}
        self.reusable = not old and "close" not in connection
        if self._head_only or status in (204, 304):
            self._left = 0
        elif "Transfer-Encoding" in headers:
            codings = [c.strip().lower() for c in ",".join(headers.getall("Transfer-Encoding")).split(",")]
            if codings[-1:] != ["chunked"]:
                raise BadResponse("its response has a transfer coding other than chunked")
            self.reusable = self.reusable and "Content-Length" not in headers
            self._raw = self._raw if self._raw is not None else bytearray(64 * 1024)
            self._chunk_state = "size"
            self._line.clear()
            self._state = "chunked"
            if excess:
                self._decode_chunked(memoryview(excess))
            if self.closed and self._state == "chunked":
                self._emit()
                self._error = Dropped("connection closed before the response ended")
                self._state = "closed"
                self._wake()
            else:
                self._resume()
            return
        else:
            self._left = _content_length(headers)
            if self._left is None:
                self.reusable = False
        if self._left is not None and len(excess) > self._left:
            excess = excess[: self._left]
            self.reusable = False  # more than the response: never taken as the next one
        self._state = "body"
        chunk_size = self.client.chunk_size
        for at in range(0, len(excess), chunk_size):
            piece = excess[at : at + chunk_size]
            self._view[: len(piece)] = piece
            self._fill = len(piece)
            self._body_got += len(piece)
            if self._left is not None:
                self._left -= len(piece)
            if self._fill >= chunk_size or self._left == 0:
                self._emit()
        if self._left == 0:
            self._emit()
            self._body_done()
        elif self.closed:
            # The connection ended right after the head: the end of the body if the connection frames it.
            self._emit()
            if self._left is None:
                self._state = "done"
            else:
                self._error = Dropped("connection closed before the response ended")
                self._state = "closed"
            self._wake()
        else:
            self._resume()

    def until(self, count: int) -> None:
        """Hand on what arrived as soon as ``count`` body bytes are in, without waiting for a full chunk."""
        self._until = count
        if self._state == "body" and self._reached_until():
            self._emit()
        if self._low_water > 1:
            self._raise_low_water()  # never above what the reader now waits for

    async def next_chunk(self, read_timeout: float, min_rate: float = 0.0, window: float = 30.0) -> bytes | None:
        """The body's next chunk, None at its end; the bytes received before a failure come first. A body
        averaging under ``min_rate`` bytes a second over ``window`` seconds fails with :class:`TooSlow`."""
        self._stall_timeout = read_timeout
        while not self._queue:
            if self._state == "done":
                return None
            if self._error is not None:
                raise self._error
            self._resume()
            waiter = self._waiter = self.loop.create_future()
            now = self.loop.time()
            left = read_timeout - (now - self.last_activity)
            if left <= 0:
                # What did arrive is handed on first: a resumed download continues after it.
                self._emit()
                self._error = Stalled("no byte within the read timeout")
                self._state = "closed"
                self._close()
                continue
            if min_rate:
                elapsed = now - self._rate_from
                if elapsed >= window:
                    if self._rate_bytes < min_rate * elapsed:
                        self._emit()
                        self._error = TooSlow(self._rate_bytes, elapsed, min_rate)
                        self._state = "closed"
                        self._close()
                        continue
                    self._rate_from, self._rate_bytes = now, 0
                    elapsed = 0.0
                left = min(left, window - elapsed)
            try:
                async with asyncio.timeout(left):  # not wait_for: see head()
                    await waiter
            except TimeoutError:
                continue
            finally:
                self._waiter = None
        chunk = self._queue.popleft()
        if len(self._queue) < _QUEUED_CHUNKS and self._state in ("body", "chunked"):
            self._resume()
        return chunk

    @property
    def finished(self) -> bool:
        return self._state == "done" and not self._queue


class _ClosedBeforeResponse(Dropped):
    """A kept-alive connection the server had closed: the request is sent again on a new one."""


class Response:
    """One response: its status and headers, its body read with :meth:`iter_chunks` or :meth:`read`."""

    def __init__(
        self,
        client: WireClient,
        conn: _Connection,
        url: str,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
    ) -> None:
        self._client = client
        self._conn: _Connection | None = conn
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers

    async def iter_chunks(self, until: int | None = None) -> AsyncIterator[bytes]:
        """The body in chunks of ``chunk_size`` (the last may be shorter, and so may the one before an error).
        ``until``: the body bytes the reader wants; once they are in they are handed on at once (a source that
        announced more and holds the connection open is not waited for)."""
        conn = self._conn
        if conn is None:
            return
        if until is not None:
            conn.until(until)
        client = self._client
        while (chunk := await conn.next_chunk(client.read_timeout, client.min_rate, client.rate_window)) is not None:
            yield chunk

    async def next_chunk(self, stall: float) -> bytes | None:
        """The next chunk of the body, :class:`Stalled` after ``stall`` seconds without a byte."""
        conn = self._conn
        if conn is None:
            return None
        return await conn.next_chunk(stall)

    async def read(self, limit: int) -> bytes:
        """The whole body, refused past ``limit`` bytes."""
        parts: list[bytes] = []
        held = 0
        async for chunk in self.iter_chunks():
            held += len(chunk)
            if held > limit:
                raise TooLarge(f"its response is larger than {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        """Give the connection back for another request if the whole response was read, else close it."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn)


class WireClient:
    """Keep-alive connections per origin, for GETs of bodies (see the module's docstring)."""

    def __init__(
        self,
        *,
        chunk_size: int,
        connect_timeout: float,
        read_timeout: float,
        ssl_context: ssl.SSLContext | None = None,
        max_idle: int = 64,
        answer_timeout: float | None = None,
        min_rate: float = 0.0,
        rate_window: float = 30.0,
    ) -> None:
        self.chunk_size = chunk_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._open: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._max_idle = max_idle
        self.closed = False
        #: Connections opened so far (each a TCP, maybe TLS, handshake).
        self.opened = 0
        #: Called with the size of every read from a socket: throughput as it happens, not a chunk at a time.
        self.meter: Callable[[int], None] | None = None
        #: Seconds a request may take to connect and receive its whole head (None: only the stall timeout,
        #: which a head trickled a byte at a time never trips).
        self.answer_timeout = answer_timeout
        #: A body averaging fewer bytes a second than this over ``rate_window`` seconds fails (0: never).
        self.min_rate = min_rate
        self.rate_window = rate_window

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, headers: Mapping[str, str], *, redirects: bool = True
    ) -> AsyncIterator[Response]:
        """``method`` ``url``; with ``redirects``, followed to where it redirects (bodies of redirects are
        read and dropped, ``Authorization`` is not sent to another origin)."""
        sent = dict(headers)
        for _ in range(MAX_REDIRECTS + 1):
            try:
                async with asyncio.timeout(self.answer_timeout):
                    response = await self._exchange(method, url, sent)
            except TimeoutError as exc:
                if isinstance(exc, Stalled):
                    raise
                raise Stalled(f"no complete answer within {self.answer_timeout:g}s") from None
            location = response.headers.get("Location")
            if not (redirects and response.status in _REDIRECTS and location):
                try:
                    yield response
                finally:
                    response.release()
                return
            with contextlib.suppress(WireError, BadResponse):
                await response.read(MAX_HEAD)  # a redirect's body is small; a large one closes the connection
            response.release()
            following = urljoin(url, location.strip())
            if _origin(following)[0] != _origin(url)[0]:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = following
        raise BadResponse("it redirected too many times (a redirect loop)")

    async def _exchange(self, method: str, url: str, headers: Mapping[str, str]) -> Response:
        origin, target = _origin(url)
        host = urlsplit(url).netloc.rpartition("@")[2]
        for attempt in range(2):
            conn = await self._connection(origin, fresh=attempt > 0)
            try:
                await conn.send(method, target, host, headers)
                status, reason, parsed, old = await conn.head(self.read_timeout)
                conn.start_body(status, parsed, old)
            except _ClosedBeforeResponse:
                conn._close()
                if conn.requests > 1 and attempt == 0:
                    continue  # a kept-alive connection the server had closed: once more on a new one
                raise
            except BaseException:
                conn._close()
                raise
            return Response(self, conn, url, status, reason, parsed)
        raise AssertionError("unreachable")

    async def _connection(self, origin: _Origin, *, fresh: bool) -> _Connection:
        if self.closed:
            raise Dropped("the client is closed")
        idle = self._idle.get(origin)
        while idle and not fresh:
            conn = idle.pop()
            if not conn.closed:
                return conn
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if scheme == "https":
            if self._ssl is None:
                # Made on first use: a plain-http import never pays for loading the CA certificates.
                self._ssl = ssl.create_default_context()
            context = self._ssl
        conn = _Connection(self, origin)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(
                    lambda: conn, host, port, ssl=context, server_hostname=host if context else None
                )
        except TimeoutError:
            raise ConnectFailed(host, port) from None
        except ssl.SSLCertVerificationError as exc:
            # Not the network: a certificate this machine does not trust (SSL_CERT_FILE names extra CAs).
            raise BadResponse(f"its TLS certificate cannot be verified ({exc.verify_message})") from None
        except ssl.SSLError as exc:
            raise TlsFailed(host, port, exc.reason or type(exc).__name__) from None
        except OSError:
            raise ConnectFailed(host, port) from None
        self.opened += 1
        self._open.add(conn)
        return conn

    def _release(self, conn: _Connection) -> None:
        if conn.closed:
            return
        if not (conn.reusable and conn.finished) or self.closed:
            conn._close()
            return
        conn._state = "idle"
        idle = self._idle.setdefault(conn.origin, [])
        if len(idle) >= self._max_idle:
            conn._close()
            return
        conn._resume()  # reading on: a server closing the idle connection is noticed
        idle.append(conn)

    def _forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle is not None and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        self.closed = True
        for conn in list(self._open):
            if conn.loop.is_closed():
                # Used under a loop that is gone (an import run by asyncio.run elsewhere): its transport can
                # schedule nothing any more. The server is told we are done; the descriptor goes with the object.
                sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
            else:
                conn._close()
        self._idle.clear()
        await asyncio.sleep(0)  # let the transports run their connection_lost


def _parse_head(head: bytes) -> tuple[int, str, CIMultiDictProxy[str], bool]:
    lines = head[:-4].split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise BadResponse("its response is not valid HTTP (a malformed status line)")
    headers: CIMultiDict[str] = CIMultiDict()
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or _TOKEN.fullmatch(name) is None:
            raise BadResponse("its response is not valid HTTP (a malformed header line)")
        value = value.strip(b" \t")
        if _FIELD_VALUE.fullmatch(value) is None:
            raise BadResponse("its response is not valid HTTP (control characters in a header)")
        headers.add(name.decode("latin-1"), value.decode("latin-1"))
    return int(m[2]), (m[3] or b"").decode("latin-1"), CIMultiDictProxy(headers), m[1] == b"0"


def _content_length(headers: CIMultiDictProxy[str]) -> int | None:
    values = {v.strip() for v in ",".join(headers.getall("Content-Length", [])).split(",") if v.strip()}
    if not values:
        return None
    if len(values) > 1 or not all(v.isdigit() for v in values):
        raise BadResponse("its response has a malformed or conflicting Content-Length")
    return int(values.pop())


def content_length_of(headers: CIMultiDictProxy[str]) -> int | None:
    """A response's ``Content-Length`` (None: none, or not one the connection framed the body with)."""
    try:
        return _content_length(headers)
    except BadResponse:
        return None


def describe(exc: BaseException) -> str:
    """A failure in words, without the URL (it may carry a signature)."""
    if isinstance(exc, WireError):
        return exc.describe()
    return type(exc).__name__

