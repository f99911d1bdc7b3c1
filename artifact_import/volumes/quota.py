"""Quota scopes: how much a scope may hold, what it holds, and what imports have claimed.

An import *reserves* its announced size before any byte moves; the
reservation fails at once if the scope cannot hold it. While bytes stream,
every write is *charged*: to its import's reservation while that lasts, and
beyond it (sizes can lie) only against space nobody has claimed, else the
write fails and its import aborts. A committed file moves its bytes from
the reservation into ``used``. All of this is plain arithmetic on the event
loop (no await between check and update), so concurrent imports into one
scope cannot both take the same free space.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs

from ..errors import QuotaExceededError
from ..units import human_bytes


@attrs.frozen
class QuotaUsage:
    """A quota scope as it stands: its limit (``None``: unlimited), committed and in-flight bytes."""

    scope: str
    limit: int | None
    used: int
    in_flight: int = 0

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used - self.in_flight, 0)


@attrs.define(eq=False)
class Reservation:
    """Space promised to one import in one scope."""

    ledger: QuotaLedger
    scope: str
    granted: int
    charged: int = 0

    @property
    def claim(self) -> int:
        return max(self.granted, self.charged)


#: The reservations of the import running in this task (and the tasks it starts).
_current: contextvars.ContextVar[tuple[Reservation, ...]] = contextvars.ContextVar("reservations", default=())


@attrs.define(eq=False)
class _Scope:
    limit: int | None = None
    used: int | None = None
    #: Bytes written by pending writes that belong to no reservation.
    loose: int = 0
    reservations: set[Reservation] = attrs.field(factory=set)
    #: Held while usage is measured and while a file commits, so neither sees the other half-done.
    lock: asyncio.Lock = attrs.field(factory=asyncio.Lock)

    def claimed(self) -> int:
        return self.loose + sum(r.claim for r in self.reservations)

    def busy(self) -> bool:
        return self.loose > 0 or any(r.charged for r in self.reservations)


class QuotaLedger:
    """The quota scopes of one volume.

    ``load`` gives a scope's usage when the ledger first needs it (a
    measurement, or a stored record); with ``remeasure``, it is called again
    for every reservation made while the scope has nothing in flight, so
    writes by others since are seen. ``save`` is told a scope's usage after
    an import ends or the usage changed otherwise, for volumes that keep a
    record.
    """

    def __init__(
        self,
        where: str,
        load: Callable[[str], Awaitable[int]],
        *,
        remeasure: bool = False,
        save: Callable[[str, int], Awaitable[None]] | None = None,
    ) -> None:
        self.where = where
        self._load = load
        self._remeasure = remeasure
        self._save = save
        self._scopes: dict[str, _Scope] = {}

    def _scope(self, scope: str) -> _Scope:
        return self._scopes.setdefault(scope, _Scope())

    def set_limit(self, scope: str, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError("a quota limit cannot be negative")
        self._scope(scope).limit = limit

    def limit(self, scope: str) -> int | None:
        return self._scope(scope).limit

    def lock(self, scope: str) -> asyncio.Lock:
        return self._scope(scope).lock

    async def ensure_loaded(self, scope: str) -> None:
        s = self._scope(scope)
        if s.used is None:
            async with s.lock:
                if s.used is None:
                    s.used = await self._load(scope)

    async def usage(self, scope: str) -> QuotaUsage:
        await self.ensure_loaded(scope)
        s = self._scope(scope)
        assert s.used is not None
        return QuotaUsage(scope, s.limit, s.used, s.claimed())

    async def set_used(self, scope: str, used: int, *, save: bool = True) -> None:
        """Replace the usage (after a full measurement) under the scope's lock held by the caller."""
        self._scope(scope).used = used
        if save and self._save is not None:
            await self._save(scope, used)

    def current(self, scope: str) -> Reservation | None:
        """The reservation the running import holds in ``scope`` of this ledger, if any."""
        for reservation in _current.get():
            if reservation.ledger is self and reservation.scope == scope:
                return reservation
        return None

    @contextlib.asynccontextmanager
    async def reserve(self, scope: str, nbytes: int, *, what: str) -> AsyncIterator[Reservation]:
        """Promise ``nbytes`` of ``scope`` to the import running in this task, or refuse it now."""
        s = self._scope(scope)
        async with s.lock:
            if s.used is None or (self._remeasure and not s.busy()):
                s.used = await self._load(scope)
            if s.limit is not None:
                left = s.limit - s.used - s.claimed()
                if nbytes > left:
                    raise QuotaExceededError(
                        f"{what}: the import needs {human_bytes(nbytes)} but quota scope {scope!r} of "
                        f"{self.where} has {human_bytes(max(left, 0))} left (limit {human_bytes(s.limit)}, "
                        f"{human_bytes(s.used)} used, {human_bytes(s.claimed())} claimed by imports in "
                        "progress). Free space in the scope, raise its quota, or import fewer files "
                        "(--include/--exclude)."
                    )
            reservation = Reservation(self, scope, nbytes)
            s.reservations.add(reservation)
        token = _current.set((*_current.get(), reservation))
        try:
            yield reservation
        finally:
            _current.reset(token)
            s.reservations.discard(reservation)
            if self._save is not None and s.used is not None:
                with contextlib.suppress(Exception):
                    async with s.lock:
                        await self._save(scope, s.used)

    def charge(self, scope: str, reservation: Reservation | None, nbytes: int, *, path: str) -> None:
        """Count ``nbytes`` more written by a pending write; raise if the scope cannot hold them."""
        s = self._scope(scope)
        if reservation is not None and reservation.charged + nbytes <= reservation.granted:
            reservation.charged += nbytes
            return
        extra = nbytes if reservation is None else reservation.charged + nbytes - reservation.claim
        if s.limit is not None:
            assert s.used is not None
            if s.used + s.claimed() + extra > s.limit:
                announced = f" beyond the {human_bytes(reservation.granted)} announced" if reservation else ""
                raise QuotaExceededError(
                    f"{path}: quota scope {scope!r} of {self.where} is full (limit {human_bytes(s.limit)}, "
                    f"{human_bytes(s.used)} used): the import wrote more than it announced{announced}, "
                    "or others took the space. The import was aborted; nothing of it was kept.",
                    path=path,
                )
        if reservation is not None:
            reservation.charged += nbytes
        else:
            s.loose += nbytes

    def uncharge(self, scope: str, reservation: Reservation | None, nbytes: int) -> None:
        """A pending write was aborted: its bytes are free again."""
        if reservation is not None:
            reservation.charged -= nbytes
        else:
            self._scope(scope).loose -= nbytes

    def committed(self, scope: str, reservation: Reservation | None, nbytes: int, replaced: int) -> None:
        """A pending write of ``nbytes`` committed over a file of ``replaced`` bytes (0 if new)."""
        s = self._scope(scope)
        assert s.used is not None
        s.used += nbytes - replaced
        if reservation is not None:
            reservation.charged -= nbytes
            reservation.granted = max(reservation.granted - nbytes, 0)
        else:
            s.loose -= nbytes

    def removed(self, scope: str, nbytes: int) -> None:
        s = self._scope(scope)
        if s.used is not None:
            s.used = max(s.used - nbytes, 0)
