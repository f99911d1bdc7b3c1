"""An HTTP proxy in front of a real S3 server that fails or damages chosen part uploads.

It forwards every request as it came (the ``Host`` header included, so the
client's signature still verifies upstream), except ``UploadPart`` requests
whose part number is listed: those are refused with HTTP 500 (``refuse``),
every time, as a broken load balancer or a full disk behind one would, or
forwarded with one byte of their body flipped (``corrupt``), as a bad NIC
or middlebox would.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
_INTERNAL = (
    '<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
    "<Message>We encountered an internal error, please try again.</Message></Error>"
)


class FaultyS3Proxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.refuse: set[int] = set()
        self.corrupt: set[int] = set()
        #: (method, path, query) of every request, in order.
        self.seen: list[tuple[str, str, str]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="s3-proxy", daemon=True)
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self.url

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 31)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, request.query_string))
        part = int(request.query.get("partNumber", "0")) if "uploadId" in request.query else 0
        body = await request.read()
        if request.method == "PUT" and part in self.refuse:
            return web.Response(status=500, text=_INTERNAL, content_type="application/xml")
        if request.method == "PUT" and part in self.corrupt and body:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        assert self._session is not None
        async with self._session.request(
            request.method,
            f"{self.upstream}{request.rel_url}",
            headers=headers,
            data=body,
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept", "Accept-Encoding"),
        ) as upstream:
            payload = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP | {"content-length"}}
            return web.Response(status=upstream.status, body=payload, headers=out)

    def stop(self) -> None:
        async def stop() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            if self._session is not None:
                await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
