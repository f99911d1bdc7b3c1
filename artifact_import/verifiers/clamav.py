"""Malware scanning with ClamAV's clamd, speaking INSTREAM from asyncio, failing closed.

clamd refuses streams over ``StreamMaxLength`` (100 MB by default) and
reports files over ``MaxFileSize`` as clean without scanning them. So a file
is scanned as a series of *windows*, each below those limits, each starting
with the last ``overlap`` bytes of the one before it, so that a signature
across a boundary is still seen whole. Windows are scanned as the bytes
stream past the import, several at a time to use clamd's threads.

Anything but a clean answer for every window is a failure: a signature,
a ``Heuristics.Limits.Exceeded`` result, a size-limit error, a refused or
closed connection, a timeout.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import struct
from urllib.parse import urlsplit

import attrs

from ..errors import ConfigError, ScannerError
from ..model import ArtifactFile, Verdict
from .base import Verifier, VerifierSession

MiB = 1 << 20
#: Below clamd's stock StreamMaxLength and MaxFileSize (100 MB), with room to spare.
DEFAULT_WINDOW = 64 * MiB
#: Longer than any signature in ClamAV's databases.
DEFAULT_OVERLAP = 1 * MiB


@attrs.frozen
class ClamdAddress:
    """``tcp://HOST:PORT`` or ``unix:///PATH``."""

    text: str

    def __attrs_post_init__(self) -> None:
        parts = urlsplit(self.text)
        if parts.scheme == "tcp" and parts.hostname and parts.port:
            return
        if parts.scheme == "unix" and parts.path:
            return
        raise ConfigError(f"clamd address {self.text!r}: expected tcp://HOST:PORT or unix:///PATH")

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        parts = urlsplit(self.text)
        if parts.scheme == "unix":
            return await asyncio.open_unix_connection(parts.path)
        return await asyncio.open_connection(parts.hostname, parts.port)


class ClamAVVerifier(Verifier):
    name = "clamav"

    def __init__(
        self,
        address: str,
        *,
        window_size: int = DEFAULT_WINDOW,
        overlap: int = DEFAULT_OVERLAP,
        max_concurrent_scans: int = 2,
        timeout: float = 120.0,
        unset: str = "import without a malware scan",
    ) -> None:
        """``unset``: how to import without the scan where the address was given (``import without --clamd``,
        ``unset ARTIFACT_IMPORT_CLAMD``, ...), said when clamd cannot be reached."""
        if overlap >= window_size:
            raise ConfigError("the ClamAV window overlap must be smaller than the window")
        self.address = ClamdAddress(address)
        self.window_size = window_size
        self.overlap = overlap
        self.timeout = timeout
        self.unset = unset
        self._slots = asyncio.Semaphore(max_concurrent_scans)
        self._version: str | None = None

    def start(self, file: ArtifactFile) -> VerifierSession:
        return _ClamSession(self, file)

    async def version(self, what: str) -> str:
        """clamd's engine and signature database versions, e.g. ``ClamAV 1.4.6/1/Thu ...``."""
        if self._version is None:
            reply = await self._command(what, b"zVERSION\0")
            self._version = reply
        return self._version

    async def _command(self, what: str, command: bytes) -> str:
        reader, writer = await self._connect(what)
        try:
            writer.write(command)
            await writer.drain()
            return await self._reply(what, reader)
        finally:
            writer.close()

    async def _connect(self, what: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            # asyncio.timeout, not wait_for: Python 3.11's wait_for can lose a cancellation (see registries.wire).
            async with asyncio.timeout(self.timeout):
                return await self.address.connect()
        except (OSError, TimeoutError) as exc:
            raise ScannerError(
                f"{what}: malware scan failed: cannot connect to clamd at {self.address.text} "
                f"({type(exc).__name__}); start clamd, or {self.unset}",
                path=what,
            ) from None

    async def _reply(self, what: str, reader: asyncio.StreamReader) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                raw = await reader.readuntil(b"\0")
        except TimeoutError:
            raise ScannerError(
                f"{what}: malware scan failed: clamd did not answer in {self.timeout:.0f}s", path=what
            ) from None
        except (asyncio.IncompleteReadError, OSError):
            raise ScannerError(
                f"{what}: malware scan failed: clamd closed the connection before answering", path=what
            ) from None
        return raw.rstrip(b"\0").decode(errors="replace").strip()


class _Window:
    """One INSTREAM connection: a slice of the file, starting at ``start``."""

    def __init__(self, start: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.start = start
        self.reader = reader
        self.writer = writer
        self.sent = 0


class _ClamSession(VerifierSession):
    def __init__(self, verifier: ClamAVVerifier, file: ArtifactFile) -> None:
        self._v = verifier
        self._file = file
        self._window: _Window | None = None
        self._results: list[asyncio.Task[tuple[int, int, str]]] = []
        #: The most recent bytes sent, enough to replay ``overlap`` of them into the next window.
        self._recent: collections.deque[bytes] = collections.deque()
        self._recent_size = 0
        self._position = 0

    async def feed(self, chunk: bytes) -> None:
        self._fail_fast()
        view = memoryview(chunk)
        while view:
            if self._window is None:
                await self._open(replay=True)
            window = self._window
            assert window is not None
            part = view[: self._v.window_size - window.sent]
            await self._send(window, bytes(part))
            self._remember(bytes(part))
            self._position += len(part)
            view = view[len(part) :]
            if window.sent >= self._v.window_size:
                self._close_window()

    async def _open(self, *, replay: bool) -> None:
        await self._v._slots.acquire()
        try:
            reader, writer = await self._v._connect(self._file.path)
            tail = self._tail() if replay else b""
            self._window = _Window(self._position - len(tail), reader, writer)
            writer.write(b"zINSTREAM\0")
            if tail:
                await self._send(self._window, tail)
        except BaseException:
            if self._window is not None:
                self._window.writer.close()
                self._window = None
            self._v._slots.release()
            raise

    async def _send(self, window: _Window, data: bytes) -> None:
        window.writer.write(struct.pack("!L", len(data)))
        window.writer.write(data)
        window.sent += len(data)
        try:
            async with asyncio.timeout(self._v.timeout):
                await window.writer.drain()
        except (OSError, TimeoutError):
            # clamd may have said why it closed the stream (e.g. a size limit).
            reason = await self._reply_if_any(window)
            raise ScannerError(
                f"{self._file.path}: malware scan failed: clamd stopped reading the stream"
                + (f" ({reason})" if reason else ""),
                path=self._file.path,
            ) from None

    async def _reply_if_any(self, window: _Window) -> str:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                raw = await window.reader.read(4096)
            return raw.rstrip(b"\0").decode(errors="replace").strip()
        return ""

    def _remember(self, data: bytes) -> None:
        self._recent.append(data)
        self._recent_size += len(data)
        while self._recent and self._recent_size - len(self._recent[0]) >= self._v.overlap:
            self._recent_size -= len(self._recent.popleft())

    def _tail(self) -> bytes:
        joined = b"".join(self._recent)
        return joined[-self._v.overlap :] if self._v.overlap else b""

    def _close_window(self) -> None:
        window, self._window = self._window, None
        assert window is not None
        end = self._position
        self._results.append(asyncio.ensure_future(self._finish_window(window, end)))

    async def _finish_window(self, window: _Window, end: int) -> tuple[int, int, str]:
        try:
            window.writer.write(struct.pack("!L", 0))
            with contextlib.suppress(OSError):
                await window.writer.drain()
            return window.start, end, await self._v._reply(self._file.path, window.reader)
        finally:
            window.writer.close()
            self._v._slots.release()

    def _fail_fast(self) -> None:
        for task in self._results:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def finish(self) -> Verdict:
        if self._window is None and not self._results:
            await self._open(replay=False)  # an empty file is still scanned, and clamd still asked
        if self._window is not None:
            self._close_window()
        replies = await asyncio.gather(*self._results)
        version = await self._v.version(self._file.path)
        data = {"engine": version, "windows": len(replies), "window_size": self._v.window_size}
        for start, end, reply in replies:
            status = reply.removeprefix("stream:").strip()
            if status == "OK":
                continue
            if status.endswith("FOUND"):
                signature = status.removesuffix("FOUND").strip()
                data["signature"] = signature
                if signature.startswith("Heuristics.Limits.Exceeded"):
                    detail = f"clamd could not scan bytes {start}-{end} fully ({signature}); not known to be clean"
                else:
                    detail = f"infected: {signature} (in bytes {start}-{end})"
                return Verdict(ClamAVVerifier.name, False, detail, data)
            raise ScannerError(
                f"{self._file.path}: malware scan failed: clamd answered {reply!r}", path=self._file.path
            )
        return Verdict(ClamAVVerifier.name, True, f"clean ({version})", data)

    async def cancel(self) -> None:
        if self._window is not None:
            self._window.writer.close()
            self._window = None
            self._v._slots.release()
        for task in self._results:
            task.cancel()
        await asyncio.gather(*self._results, return_exceptions=True)
