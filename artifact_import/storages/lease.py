"""One import per destination on object storage: a lock object with a lease.

There is no ``flock`` on a bucket, so the lock is an object,
``.artifact-import/lock.json`` under the destination's prefix, naming its
holder (a random token, the host, the pid) and when its lease runs out. The
holder rewrites it every third of the lease; a lock nobody renews is dead.

Taking it is a conditional write (``If-None-Match: *``, and ``If-Match`` on the
dead holder's ETag to take one over) where the server honours conditions
(AWS S3 since 2024, recent MinIO, moto). Servers that ignore them (JuiceFS's
gateway, older MinIO) are found out by a second conditional write of the
same key, which they accept; there the writer reads the lock back after a
settling pause and holds it only if its own token is still the one stored:
of two writers racing within that pause, the one written last wins and the
other goes on waiting.

A lock is dead when the pid it names is gone on this host, when its ETag has
not changed for a whole lease while we watched (no clock comparison between
machines needed), or when its recorded expiry is a whole lease in the past.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from ..errors import StorageError, StorageFileNotFoundError
from ..paths import RESERVED_DIR

if TYPE_CHECKING:
    from ..s3 import S3Bridge

log = logging.getLogger(__name__)

LOCK_PATH = f"{RESERVED_DIR}/lock.json"
#: How long a lock lives without being renewed (renewed every third of it).
DEFAULT_LEASE = 30.0
#: Where conditions are ignored: how long a writer waits before reading back whether its write won.
SETTLE = 0.5
POLL = 1.0
_CONFLICT_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict"})


#: Tokens of the locks this process holds or is trying to take now: a lock naming this pid and a token not
#: here is one this process could not remove (the server was unreachable), not one of a concurrent import of
#: the same process (which may have written it a moment ago and not yet know it won).
_HELD: set[str] = set()


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


class ObjectLock:
    """The lock of one destination: the object ``key`` of ``bucket``; used through
    :meth:`ObjectStorage.exclusive`. ``where`` names the destination in messages."""

    def __init__(
        self, bridge: S3Bridge, bucket: str, key: str, where: str, *, lease: float = DEFAULT_LEASE, poll: float = POLL
    ) -> None:
        self._bridge = bridge
        self._bucket = bucket
        self._key = key
        self._where = where
        self.lease = lease
        self.poll = poll
        self.token = uuid.uuid4().hex
        self._lost = False

    def _body(self) -> bytes:
        return json.dumps(
            {
                "token": self.token,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "lease": self.lease,
                "expires": time.time() + self.lease,
            }
        ).encode()

    async def _read(self) -> tuple[dict[str, Any], str] | None:
        """The lock's content and ETag, or None if there is no lock."""

        def read() -> tuple[dict[str, Any], str] | None:
            from minio.error import S3Error

            client = self._bridge.client
            try:
                resp = client.get_object(self._bucket, self._key)
            except S3Error as exc:
                if exc.code in ("NoSuchKey", "NoSuchObject"):
                    return None
                raise
            try:
                data, etag = resp.read(64 * 1024), str(resp.headers.get("etag", "")).strip('"')
            finally:
                resp.close()
                resp.release_conn()
            try:
                holder = json.loads(data)
            except ValueError:
                holder = None
            return (holder if isinstance(holder, dict) else {}), etag

        try:
            return await self._bridge.call(LOCK_PATH, read)
        except StorageFileNotFoundError:
            return None

    async def _put(self, *, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """Write our lock; its ETag, or None if a condition failed (someone else holds it)."""
        headers: dict[str, str | list[str] | tuple[str]] = {"Content-Type": "application/json"}
        if if_none_match:
            headers["If-None-Match"] = "*"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        body = self._body()

        def put() -> str | None:
            from minio.error import S3Error

            try:
                return str(self._bridge.client._put_object(self._bucket, self._key, body, headers).etag)
            except S3Error as exc:
                if exc.code in _CONFLICT_CODES:
                    return None
                raise

        return await self._bridge.call(LOCK_PATH, put)

    async def _honours_conditions(self) -> bool:
        """Whether the server refuses a conditional write of an existing key (we just wrote it)."""
        if self._bridge.conditional_writes is None:
            self._bridge.conditional_writes = await self._put(if_none_match=True) is None
            log.debug("%s: conditional writes honoured: %s", self._where, self._bridge.conditional_writes)
        return self._bridge.conditional_writes

    async def _won(self) -> bool:
        if await self._honours_conditions():
            return True
        await asyncio.sleep(SETTLE)
        current = await self._read()
        return current is not None and current[0].get("token") == self.token

    def _dead(self, holder: dict[str, Any], unchanged_for: float) -> bool:
        pid, host = holder.get("pid"), holder.get("host")
        if host == socket.gethostname() and isinstance(pid, int):
            if pid == os.getpid() and holder.get("token") not in _HELD:
                return True
            if pid != os.getpid() and _pid_gone(pid):
                return True
        if unchanged_for >= self.lease:
            return True
        expires, lease = holder.get("expires"), holder.get("lease")
        if isinstance(expires, int | float) and isinstance(lease, int | float):
            return time.time() > expires + lease
        return not holder  # unreadable: nobody can renew it

    async def acquire(self, wait: float | None, on_wait: Callable[[], None] | None) -> None:
        deadline = None if wait is None else time.monotonic() + wait
        told = False
        watched: tuple[str, float] | None = None  # (ETag, when first seen)
        while True:
            current = await self._read()
            if current is None:
                etag = await self._put(if_none_match=True)
                if etag is not None and await self._won():
                    return
                holder: dict[str, Any] = {}
            else:
                holder, etag = current
                if watched is None or watched[0] != etag:
                    watched = (etag, time.monotonic())
                if self._dead(holder, time.monotonic() - watched[1]):
                    taken = await self._put(if_match=etag)
                    if taken is not None and await self._won():
                        log.warning(
                            "%s: took over the lock of an import that stopped renewing it (%s, pid %s)",
                            self._where,
                            holder.get("host", "?"),
                            holder.get("pid", "?"),
                        )
                        return
            if deadline is not None and time.monotonic() >= deadline:
                who = f" (on {holder['host']}, pid {holder['pid']})" if "host" in holder and "pid" in holder else ""
                raise StorageError(
                    f"{self._where}: another import into this destination is still running{who}; wait for "
                    "it to finish, or raise the wait (--lock-timeout). A lock whose holder died is taken over "
                    f"once its lease ({self.lease:.0f} s) runs out"
                )
            if on_wait is not None and not told:
                on_wait()
                told = True
            await asyncio.sleep(self.poll)

    async def keep(self, owner: asyncio.Task[Any]) -> None:
        """Renew the lease until cancelled; if another took the lock meanwhile, cancel ``owner``."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                current = await self._read()
                if current is None or current[0].get("token") != self.token:
                    self._lost = True
                    owner.cancel()
                    return
                conditional = self._bridge.conditional_writes
                if await self._put(if_match=current[1] if conditional else None) is None:
                    self._lost = True
                    owner.cancel()
                    return
            except StorageError as exc:
                # The import's own calls will fail the same way; the lease lives on until it runs out.
                log.warning("%s: could not renew the lock: %s", self._where, exc)

    async def release(self) -> None:
        with contextlib.suppress(StorageError):
            current = await self._read()
            if current is not None and current[0].get("token") == self.token:
                await self._bridge.call(LOCK_PATH, self._bridge.client.remove_object, self._bucket, self._key)

    @contextlib.asynccontextmanager
    async def held(self, wait: float | None, on_wait: Callable[[], None] | None) -> AsyncIterator[ObjectLock]:
        _HELD.add(self.token)
        try:
            await self.acquire(wait, on_wait)
        except BaseException:
            _HELD.discard(self.token)
            raise
        owner = asyncio.current_task()
        assert owner is not None
        keeper = asyncio.create_task(self.keep(owner), name=f"lock:{self._key}")
        try:
            yield self
        except asyncio.CancelledError:
            if self._lost:
                owner.uncancel()
                raise StorageError(
                    f"{self._where}: another process took over this import's lock (its lease was not "
                    "renewed in time); stopped without committing"
                ) from None
            raise
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            _HELD.discard(self.token)
            await asyncio.shield(self.release())
