"""What clients of the import routes may hold: connections and event streams, per client and in all.

A proxy's descriptors are shared by its clients and by the imports it runs
(files being written, connections to the hub, to S3, to Redis). Clients
that hold more than their share are answered ``429`` (one client over its
limit) or ``503`` (all of them over theirs), with ``Retry-After``, so that a
flood of idle connections or event streams never takes the descriptors a
running import needs next.

- :class:`LimitedRunner` (what ``serve`` runs) counts connections as they are
  accepted. One over a limit is answered on its first request and closed; a
  flood beyond what is worth answering is closed at once.
- :class:`StreamSlots` counts event streams (``GET /import/ID/events``), which
  hold a connection (and in a fleet a Redis read) for as long as an import
  runs; the routes use it wherever they are mounted.
- :func:`raise_fd_limit` raises the soft descriptor limit to the hard one at
  start (systemd gives services 1,024 soft, 524,288 hard).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import resource
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import attrs
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

#: Descriptors kept for the imports whatever the clients hold (files, hub, S3 and Redis connections, the listener).
FD_RESERVE = 256
#: Connections over a limit kept open long enough to be told so; more are closed at once.
_REFUSED_OPEN = 64
#: Seconds a connection over a limit may take to send the request it is answered 503/429 to.
_REFUSED_GRACE = 2.0


@attrs.frozen
class Limits:
    """Per deployment (``[server]``): connections and event streams, in all and per client address."""

    max_connections: int = 1000
    max_connections_per_client: int = 256
    max_event_streams: int = 128
    max_event_streams_per_client: int = 16
    #: Seconds a client over a limit is told to wait (``Retry-After``).
    retry_after: int = 5

    def __attrs_post_init__(self) -> None:
        for name in ("max_connections", "max_connections_per_client", "max_event_streams"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_event_streams_per_client < 1 or self.retry_after < 1:
            raise ValueError("max_event_streams_per_client and retry_after must be at least 1")

    def within(self, descriptors: int) -> Limits:
        """These limits, connections lowered so that clients can never hold the descriptors imports need."""
        budget = max(16, descriptors - FD_RESERVE - _REFUSED_OPEN)
        if self.max_connections <= budget:
            return self
        log.warning(
            "serving at most %d connections (not %d): the descriptor limit is %d and imports keep %d of them",
            budget,
            self.max_connections,
            descriptors,
            FD_RESERVE,
        )
        return attrs.evolve(
            self,
            max_connections=budget,
            max_connections_per_client=min(self.max_connections_per_client, budget),
            max_event_streams=min(self.max_event_streams, budget),
        )


def raise_fd_limit() -> int:
    """Raise the soft limit on open descriptors to the hard limit; the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft == resource.RLIM_INFINITY or target <= soft:
        return soft if soft != resource.RLIM_INFINITY else 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        log.warning("could not raise the descriptor limit from %d to %d", soft, target)
        return soft
    return target


class Busy(Exception):
    """A client (``per_client``) or all of them are over a limit."""

    def __init__(self, what: str, *, per_client: bool) -> None:
        super().__init__(what)
        self.what = what
        self.per_client = per_client


class _Counts:
    """How many of something each client holds, and all of them together, against two limits."""

    def __init__(self, total: int, per_client: int, what: str) -> None:
        self.total_limit = total
        self.per_client_limit = per_client
        self.what = what
        self.total = 0
        self.by_client: collections.Counter[str] = collections.Counter()

    def take(self, client: str) -> None:
        if self.by_client[client] >= self.per_client_limit:
            raise Busy(f"this client holds {self.per_client_limit} {self.what} already", per_client=True)
        if self.total >= self.total_limit:
            raise Busy(f"the server holds {self.total_limit} {self.what} already", per_client=False)
        self.by_client[client] += 1
        self.total += 1

    def give_back(self, client: str) -> None:
        self.total -= 1
        self.by_client[client] -= 1
        if self.by_client[client] <= 0:
            del self.by_client[client]


def busy_response(exc: Busy, retry_after: int) -> web.Response:
    """``429`` to a client over its own limit, ``503`` when the server is full; both say when to try again."""
    response = web.json_response(
        {"error": {"field": "connection", "message": f"too busy: {exc.what}; try again in {retry_after}s"}},
        status=429 if exc.per_client else 503,
        headers={"Retry-After": str(retry_after)},
    )
    response.force_close()  # the connection is what is in short supply
    return response


class StreamSlots:
    """Event streams held open, counted per client address and in all."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._counts = _Counts(limits.max_event_streams, limits.max_event_streams_per_client, "event streams")

    @contextlib.contextmanager
    def hold(self, client: str) -> Iterator[None]:
        """Hold one slot while the block runs; raises :class:`Busy` if there is none."""
        self._counts.take(client)
        try:
            yield
        finally:
            self._counts.give_back(client)


def client_of(request: web.BaseRequest) -> str:
    """The address a request comes from (what per-client limits count)."""
    return request.remote or "local"


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _LimitedServer(web.Server):
    """An aiohttp server that counts its connections and refuses those over the limits."""

    def __init__(self, handler: Handler, *, limits: Limits, **kwargs: Any) -> None:
        super().__init__(self._answer, **kwargs)
        self._inner = handler
        self.limits = limits
        self._counts = _Counts(limits.max_connections, limits.max_connections_per_client, "connections")
        #: Connections admitted (their client) and connections over a limit, left open to be told so.
        self._admitted: dict[RequestHandler, str] = {}
        self._refused: dict[RequestHandler, Busy] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else "local"
        try:
            self._counts.take(client)
        except Busy as exc:
            if len(self._refused) >= _REFUSED_OPEN:
                transport.abort()  # a flood: not even an answer
                return
            self._refused[handler] = exc
            # Told on its first request; closed if it sends none.
            asyncio.get_running_loop().call_later(_REFUSED_GRACE, transport.abort)
            return
        self._admitted[handler] = client

    def connection_lost(self, handler: RequestHandler, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._refused.pop(handler, None)
        client = self._admitted.pop(handler, None)
        if client is not None:
            self._counts.give_back(client)

    async def _answer(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = self._refused.get(request.protocol)
        if refused is not None:
            return busy_response(refused, self.limits.retry_after)
        return await self._inner(request)


class LimitedRunner(web.AppRunner):
    """:class:`aiohttp.web.AppRunner` whose server keeps to ``limits`` (connections per client and in all)."""

    def __init__(self, app: web.Application, limits: Limits, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.limits = limits

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # starts the application
        return _LimitedServer(
            plain.request_handler, request_factory=plain.request_factory, limits=self.limits, **self._kwargs
        )
