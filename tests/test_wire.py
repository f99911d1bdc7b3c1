"""The HTTP/1.1 client file bodies are downloaded with, against servers that send exactly what a test scripts.

Each server is a real socket server on loopback; what it sends is raw bytes, so that what a hostile or
broken server sends (and what a hub or CDN sends in everyday HTTP) is what the client sees.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from artifact_import.registries import wire
from artifact_import.registries.wire import MAX_HEAD, BadResponse, Dropped, Stalled, TooSlow, WireClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Answers each request with what ``handler`` writes; counts connections and requests."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.url = ""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests.append(head)
                await self.handler(reader, writer, len(self.requests))
                if writer.is_closing():
                    return
        finally:
            writer.close()


def _client(chunk_size: int = 64 * 1024, read_timeout: float = 5.0) -> WireClient:
    return WireClient(chunk_size=chunk_size, connect_timeout=5.0, read_timeout=read_timeout)


async def _get(client: WireClient, url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, list[int]]:
    async with client.request("GET", url, headers or {}) as resp:
        sizes: list[int] = []
        parts: list[bytes] = []
        async for chunk in resp.iter_chunks():
            sizes.append(len(chunk))
            parts.append(chunk)
        return resp.status, b"".join(parts), sizes


def _respond(body: bytes, *, extra: bytes = b"", status: bytes = b"200 OK") -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: %d\r\n" % len(body) + extra + b"\r\n" + body)
        await writer.drain()

    return handler


@pytest.fixture
async def client() -> AsyncIterator[WireClient]:
    c = _client()
    yield c
    await c.close()


async def test_a_body_arrives_whole_in_chunks_of_the_chunk_size_over_one_kept_alive_connection(
    client: WireClient,
) -> None:
    body = hashlib.sha256(b"x").digest() * 10_000  # 320,000 bytes
    async with RawServer(_respond(body)) as server:
        for _ in range(3):
            status, got, sizes = await _get(client, f"{server.url}/f")
            assert status == 200 and got == body
            assert sizes[:-1] == [64 * 1024] * (len(sizes) - 1)
    assert server.connections == 1 and len(server.requests) == 3


async def test_a_chunked_body_with_extensions_and_trailers_is_decoded(client: WireClient) -> None:
    body = bytes(range(256)) * 1000

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for at in range(0, len(body), 7000):
            piece = body[at : at + 7000]
            writer.write(b"%x;name=value\r\n" % len(piece) + piece + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\nX-Trailer: yes\r\n\r\n")
        await writer.drain()

    async with RawServer(chunked) as server:
        assert (await _get(client, f"{server.url}/a"))[1] == body
        assert (await _get(client, f"{server.url}/b"))[1] == body
    assert server.connections == 1, "a chunked body read to its end leaves the connection reusable"


async def test_a_body_delimited_by_the_end_of_the_connection_is_read_to_its_end(client: WireClient) -> None:
    body = b"z" * 100_000

    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + body)
        await writer.drain()
        writer.close()

    async with RawServer(until_close) as server:
        assert (await _get(client, f"{server.url}/f"))[1] == body


async def test_an_interim_response_is_skipped(client: WireClient) -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with RawServer(early_hints) as server:
        assert (await _get(client, f"{server.url}/f"))[:2] == (200, b"ok")


async def test_a_kept_alive_connection_the_server_closed_is_replaced_without_an_error(client: WireClient) -> None:
    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # no "Connection: close": the client learns it when it tries again

    async with RawServer(once_per_connection) as server:
        assert (await _get(client, f"{server.url}/a"))[1] == b"ok"
        await asyncio.sleep(0.05)
        assert (await _get(client, f"{server.url}/b"))[1] == b"ok"
        # The idle connection was seen closing, or the request was sent again on a new one.
        assert server.connections == 2


async def test_bytes_beyond_the_length_are_never_read_as_the_next_response(client: WireClient) -> None:
    smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal" + smuggled)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nhonest")
        await writer.drain()

    async with RawServer(overlong) as server:
        assert (await _get(client, f"{server.url}/a"))[1] == b"real"
        assert (await _get(client, f"{server.url}/b"))[1] == b"honest"
        assert server.connections == 2, "the connection that carried extra bytes was not reused"


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (b"HTTX/9.9 two hundred\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\nBad Header Name: x\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\n folded: continuation\r\n\r\n", "malformed header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: a\x01b\r\n\r\n", "control characters"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", "conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "malformed or conflicting Content-Length"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer coding other than chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "a chunk size that is not one"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY0\r\n\r\n", "no line end after a chunk"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 20_000, "line of its response is too long"),
    ],
)
async def test_what_is_not_http_is_refused_with_what_was_wrong(
    client: WireClient, response: bytes, message: str
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(response)
        await writer.drain()
        await asyncio.sleep(1)  # the client must decide from what it has, not from the connection ending
        writer.close()

    async with RawServer(broken) as server:
        with pytest.raises(BadResponse, match=message):
            await asyncio.wait_for(_get(client, f"{server.url}/f"), 10)


async def test_an_endless_response_head_is_refused_at_its_bound(client: WireClient) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        try:
            for i in range(100_000):
                writer.write(b"X-Padding-%d: %s\r\n" % (i, b"p" * 100))
                await writer.drain()
        except ConnectionError:
            pass

    async with RawServer(endless) as server:
        with pytest.raises(BadResponse, match=f"larger than {MAX_HEAD // 1024} KiB"):
            await asyncio.wait_for(_get(client, f"{server.url}/f"), 10)


async def test_redirects_are_followed_without_the_token_to_another_origin(client: WireClient) -> None:
    async def cdn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ncdn")
        await writer.drain()

    async with RawServer(cdn) as target:
        location = f"{target.url.replace('127.0.0.1', 'localhost')}/blob?sig=1".encode()

        async def hub(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
            if n == 1:  # same origin first: the token goes along
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /step\r\nContent-Length: 0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 4\r\n\r\nmove")
            await writer.drain()

        async with RawServer(hub) as origin:
            status, body, _ = await _get(client, f"{origin.url}/resolve", {"Authorization": "Bearer hf_secret"})
    assert (status, body) == (200, b"cdn")
    assert all(b"Authorization: Bearer hf_secret" in r for r in origin.requests)
    assert target.requests and not any(b"hf_secret" in r for r in target.requests)
    assert target.requests[0].startswith(b"GET /blob?sig=1 HTTP/1.1\r\n")


@pytest.mark.parametrize(
    ("location", "message"),
    [(b"file:///etc/passwd", "not http"), (b"/loop", "redirect loop"), (b"http://127.0.0.1:99999/", "invalid port")],
)
async def test_a_redirect_that_cannot_be_followed_is_refused(
    client: WireClient, location: bytes, message: str
) -> None:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 302 Found\r\nLocation: " + location + b"\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with RawServer(redirect) as server:
        with pytest.raises(BadResponse, match=message):
            await _get(client, f"{server.url}/loop")
    if message == "redirect loop":
        assert len(server.requests) == 11, "at most 10 redirects followed"


async def test_a_redirect_target_with_spaces_and_line_breaks_cannot_inject_into_the_request(
    client: WireClient,
) -> None:
    async def respond(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        if n == 1:
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /a b\tX-Injected:%0d%0a1\r\nContent-Length: 0\r\n\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with RawServer(respond) as server:
        assert (await _get(client, f"{server.url}/x"))[1] == b"ok"
    request_line = server.requests[1].split(b"\r\n")[0]
    # urlsplit drops tabs and line breaks (as browsers do); what remains is percent-encoded.
    assert request_line == b"GET /a%20bX-Injected:%0d%0a1 HTTP/1.1"


async def test_request_headers_with_line_breaks_are_refused(client: WireClient) -> None:
    async with RawServer(_respond(b"")) as server:
        with pytest.raises(ValueError, match="cannot hold"):
            await _get(client, f"{server.url}/x", {"Authorization": "Bearer a\r\nX-Evil: 1"})
    assert server.requests == []


async def test_a_connection_cut_mid_body_hands_over_what_arrived_then_fails_as_retryable() -> None:
    client = _client(chunk_size=1 << 20)

    async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 300_000)
        await writer.drain()
        writer.transport.abort()

    received = 0
    try:
        async with RawServer(cut) as server, client.request("GET", f"{server.url}/f", {}) as resp:
            with pytest.raises(Dropped):
                async for chunk in resp.iter_chunks():
                    received += len(chunk)
    finally:
        await client.close()
    assert received == 300_000, "bytes received before the cut are handed on (a resume goes on after them)"


async def test_a_stalled_body_hands_over_what_arrived_then_times_out() -> None:
    client = _client(chunk_size=1 << 20, read_timeout=0.3)

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await asyncio.sleep(5)

    received = 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with RawServer(stall) as server, client.request("GET", f"{server.url}/f", {}) as resp:
            with pytest.raises(Stalled):
                async for chunk in resp.iter_chunks():
                    received += len(chunk)
    finally:
        await client.close()
    assert received == 1000 and loop.time() - started < 3


async def test_a_head_trickled_a_byte_at_a_time_ends_at_the_answer_deadline() -> None:
    """Every byte comes before the stall timeout, so only the deadline for a whole answer ends it."""
    client = WireClient(chunk_size=1 << 16, connect_timeout=5.0, read_timeout=1.0, answer_timeout=1.5)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 1000:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with RawServer(trickle) as server:
            with pytest.raises(Stalled, match=r"no complete answer within 1\.5s"):
                async with client.request("GET", f"{server.url}/f", {}):
                    pass
    finally:
        await client.close()
    assert loop.time() - started < 5


async def test_a_body_under_the_minimum_rate_fails_after_its_window_with_what_arrived() -> None:
    client = WireClient(chunk_size=1 << 20, connect_timeout=5.0, read_timeout=1.0, min_rate=1000, rate_window=1.0)

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        for _ in range(100):
            writer.write(b"x" * 10)  # 100 bytes a second: never a stall, far under the minimum rate
            await writer.drain()
            await asyncio.sleep(0.1)

    received = 0
    try:
        async with RawServer(trickle) as server, client.request("GET", f"{server.url}/f", {}) as resp:
            with pytest.raises(TooSlow, match="under the minimum rate"):
                async for chunk in resp.iter_chunks():
                    received += len(chunk)
    finally:
        await client.close()
    assert 0 < received < 1000, "what arrived is handed over before the failure"


async def test_a_reader_that_pauses_the_body_is_not_taken_for_a_slow_source() -> None:
    client = WireClient(chunk_size=1 << 10, connect_timeout=5.0, read_timeout=5.0, min_rate=100_000, rate_window=0.5)
    body = b"y" * (256 << 10)
    received = b""
    try:
        async with RawServer(_respond(body)) as server, client.request("GET", f"{server.url}/f", {}) as resp:
            async for chunk in resp.iter_chunks():
                received += chunk
                if len(received) == 1 << 10:
                    await asyncio.sleep(1.5)  # the disk is slow: reading stops, the source is not to blame
    finally:
        await client.close()
    assert received == body


async def test_the_bytes_a_reader_wants_are_handed_on_without_waiting_for_what_a_length_promises() -> None:
    client = _client(chunk_size=1 << 20, read_timeout=30.0)

    async def overlong(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        await asyncio.sleep(10)

    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        async with RawServer(overlong) as server, client.request("GET", f"{server.url}/f", {}) as resp:
            chunks = resp.iter_chunks(until=1000)
            first = await chunks.__anext__()
            await chunks.aclose()
    finally:
        await client.close()
    assert first == b"z" * 1000 and loop.time() - started < 5


# --- the receive low-water mark (SO_RCVLOWAT) on fast bodies ----------------------------------------------


def _burst_then(head_length: int, burst: int, rest: int, pause: float) -> Handler:
    """A head promising ``head_length`` bytes, ``burst`` of them at once, ``rest`` more after ``pause``, then
    nothing more while the connection stays open."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % head_length + b"b" * burst)
        await writer.drain()
        if rest:
            await asyncio.sleep(pause)
            writer.write(b"c" * rest)
            await writer.drain()
        await asyncio.sleep(30)

    return handler


async def test_a_fast_body_that_stops_short_hands_over_every_byte_that_arrived_then_times_out() -> None:
    """After a fast start the kernel is asked to wake the client only for larger reads; bytes that come in
    under that mark and then nothing more are still received (and handed on before the stall), not left in
    the socket where a resumed download would have to fetch them again."""
    client = _client(chunk_size=4 << 20, read_timeout=1.5)
    received = 0
    try:
        async with (
            RawServer(_burst_then(4 << 20, 1 << 20, 50_000, 0.2)) as server,
            client.request("GET", f"{server.url}/f", {}) as resp,
        ):
            with pytest.raises(Stalled):
                async for chunk in resp.iter_chunks():
                    received += len(chunk)
    finally:
        await client.close()
    assert received == (1 << 20) + 50_000


@pytest.mark.parametrize("until", [None, (1 << 20) + 100_000], ids=["length", "until"])
async def test_the_end_of_a_fast_body_is_never_waited_on_in_the_kernel(
    until: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last bytes of a body (or of what the reader wants), fewer than the low-water mark, wake the
    client as soon as they are in: not after the grace that lowers the mark for a source that slowed."""
    monkeypatch.setattr(wire, "_LOW_WATER_GRACE", 60.0)
    client = _client(chunk_size=1 << 20, read_timeout=60.0)
    wanted = (1 << 20) + 100_000
    length = wanted if until is None else 8 << 20
    received = 0
    try:
        async with (
            RawServer(_burst_then(length, wanted, 0, 0)) as server,
            asyncio.timeout(10),
            client.request("GET", f"{server.url}/f", {}) as resp,
        ):
            async for chunk in resp.iter_chunks(until=until):
                received += len(chunk)
                if received >= wanted:
                    break
    finally:
        await client.close()
    assert received == wanted


# --- TLS, as the Hub and its CDN speak it ------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (openssl's CLI, as on any Debian machine)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is missing")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def _tls_server(certificate: tuple[str, str], body: bytes) -> tuple[asyncio.Server, str]:
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    return server, f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_a_body_over_tls_arrives_whole_and_the_connection_is_kept(certificate: tuple[str, str]) -> None:
    import ssl

    body = bytes(range(256)) * 5000  # 1.28 MB: several chunks through the TLS layer
    server, url = await _tls_server(certificate, body)
    trusted = ssl.create_default_context(cafile=certificate[0])
    client = WireClient(chunk_size=1 << 20, connect_timeout=5, read_timeout=5, ssl_context=trusted)
    try:
        for _ in range(2):
            status, got, sizes = await _get(client, f"{url}/f")
            assert status == 200 and got == body and sizes == [1 << 20, len(body) - (1 << 20)]
        assert client.opened == 1
    finally:
        await client.close()
        server.close()
        await server.wait_closed()


async def test_a_certificate_nobody_vouches_for_is_refused_as_the_sources_fault(certificate: tuple[str, str]) -> None:
    server, url = await _tls_server(certificate, b"secret")
    client = _client()  # the system's CAs only
    try:
        with pytest.raises(BadResponse, match="TLS certificate cannot be verified"):
            await _get(client, f"{url}/f")
    finally:
        await client.close()
        server.close()
        await server.wait_closed()
