"""Volumes: where the storage proxy keeps users' vfolders, with quota scopes.

A volume holds vfolders; a vfolder is named by a :class:`VFolderID` (its
quota scope and its folder id). File paths given to a volume are relative to
the vfolder and are refused if they would leave it.
"""

from __future__ import annotations

import abc
import contextlib
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import PurePath
from typing import Any

import attrs

from .._aio import run_to_completion
from ..errors import ConfigError, ReadOnlyStorageError, StorageError, StorageFileNotFoundError, VFolderNotFoundError
from ..paths import path_problem
from ..storages.base import AbstractStorage, FileInfo, PendingWrite
from .quota import QuotaLedger, QuotaUsage, Reservation

_SCOPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")


def _folder_uuid(value: str | uuid.UUID) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise ConfigError(f"{value!r} is not a vfolder id (a UUID)") from None


def check_scope(scope: str) -> str:
    """``scope`` if it is a valid quota scope id (safe as a folder name and a key prefix)."""
    if not isinstance(scope, str) or not _SCOPE.match(scope) or ".." in scope:
        raise ConfigError(
            f"{scope!r} is not a quota scope id (letters, digits and _ . : @ -, starting with a letter or digit)"
        )
    return scope


def _check_scope(_: object, __: object, value: str) -> None:
    check_scope(value)


@attrs.frozen
class VFolderID:
    """A vfolder: the quota scope it is charged to, and its folder id."""

    quota_scope_id: str = attrs.field(validator=_check_scope)
    folder_id: uuid.UUID = attrs.field(converter=_folder_uuid)

    @classmethod
    def parse(cls, text: str) -> VFolderID:
        """``QUOTA_SCOPE/FOLDER_ID``, as :meth:`__str__` writes it."""
        scope, sep, folder = text.partition("/")
        if not sep or not folder or "/" in folder:
            raise ConfigError(f"{text!r} is not a vfolder id: expected QUOTA_SCOPE/FOLDER_ID")
        return cls(scope, folder)

    def __str__(self) -> str:
        return f"{self.quota_scope_id}/{self.folder_id.hex}"


@attrs.frozen
class VFolderRef:
    """A place in a vfolder: the volume's name, the vfolder, and a folder inside it."""

    volume: str
    vfid: VFolderID
    subpath: str = ""

    @classmethod
    def parse(cls, text: str) -> VFolderRef:
        """``VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH]`` (the CLI's ``vfolder:`` destination without its prefix)."""
        parts = text.strip("/").split("/", 3)
        if len(parts) < 3 or not parts[0]:
            raise ConfigError(f"{text!r} is not a vfolder: expected VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH]")
        subpath = parts[3].strip("/") if len(parts) == 4 else ""
        if subpath and path_problem(subpath) is not None:
            raise ConfigError(f"{text!r}: the subpath {subpath!r} {path_problem(subpath)}")
        return cls(parts[0], VFolderID(parts[1], parts[2]), subpath)

    def __str__(self) -> str:
        return f"{self.volume}/{self.vfid}" + (f"/{self.subpath}" if self.subpath else "")


class AbstractVolume(abc.ABC):
    """The volume backend interface, as the storage proxy's ``AbstractVolume`` has it.

    Subclasses implement the file operations on one vfolder; this class adds
    quota accounting around them: ``open_pending`` and ``add_file`` charge
    every byte to the vfolder's quota scope and refuse what does not fit.
    """

    #: Whether an interrupted import may park files here for the next one (see :mod:`..journal.record`).
    parks: bool = True

    def __init__(
        self,
        name: str,
        *,
        read_only: bool = False,
        quotas: Mapping[str, int | None] | None = None,
        read_only_vfolders: Iterable[VFolderID] = (),
    ) -> None:
        self.name = name
        self.read_only = read_only
        self.read_only_vfolders: set[VFolderID] = set(read_only_vfolders)
        self.quota = self._make_ledger()
        for scope, limit in (quotas or {}).items():
            self.quota.set_limit(scope, limit)

    @abc.abstractmethod
    def _make_ledger(self) -> QuotaLedger: ...

    def describe(self) -> str:
        return f"volume {self.name}"

    def describe_vfolder(self, vfid: VFolderID) -> str:
        return f"vfolder {vfid} on {self.describe()}"

    # -- the backend's file operations ------------------------------------------------------------

    @abc.abstractmethod
    async def sanitize_vfpath(self, vfid: VFolderID, relpath: str = "") -> PurePath:
        """Where ``relpath`` of ``vfid`` is; :class:`UnsafePathError` if it would leave the vfolder."""

    @abc.abstractmethod
    async def open_file(
        self, vfid: VFolderID, relpath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        """A pending write of ``relpath``, without quota accounting (see :meth:`open_pending`)."""

    @abc.abstractmethod
    def read_file(self, vfid: VFolderID, relpath: str) -> AsyncIterator[bytes]:
        """The bytes of ``relpath`` as bounded chunks."""

    @abc.abstractmethod
    async def _delete_file(self, vfid: VFolderID, relpath: str) -> None: ...

    @abc.abstractmethod
    async def stat_file(self, vfid: VFolderID, relpath: str) -> FileInfo | None:
        """Size of ``relpath``, or ``None`` if there is no such file."""

    @abc.abstractmethod
    def list_files(self, vfid: VFolderID, relpath: str = "") -> AsyncIterator[FileInfo]:
        """Every file under ``relpath`` of the vfolder (paths relative to ``relpath``), with its size."""

    @abc.abstractmethod
    async def mkdir(self, vfid: VFolderID, relpath: str) -> None:
        """Create a folder (and its parents) in the vfolder."""

    @abc.abstractmethod
    async def vfolder_exists(self, vfid: VFolderID) -> bool: ...

    @abc.abstractmethod
    async def create_vfolder(self, vfid: VFolderID) -> None: ...

    @abc.abstractmethod
    async def measure_usage(self, scope: str) -> int:
        """Bytes under ``scope``, measured from the volume itself (may be slow)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections and threads."""

    # -- what this class adds ---------------------------------------------------------------------

    def is_read_only(self, vfid: VFolderID) -> bool:
        return self.read_only or vfid in self.read_only_vfolders

    def check_writable(self, vfid: VFolderID) -> None:
        if self.read_only:
            raise ReadOnlyStorageError(f"{self.describe()} is read-only; choose another destination")
        if vfid in self.read_only_vfolders:
            raise ReadOnlyStorageError(f"{self.describe_vfolder(vfid)} is read-only; choose another vfolder")

    async def check_vfolder(self, vfid: VFolderID) -> None:
        if not await self.vfolder_exists(vfid):
            raise VFolderNotFoundError(f"{self.describe_vfolder(vfid)} does not exist; create it first")

    def set_quota(self, scope: str, limit: int | None) -> None:
        """Limit ``scope`` to ``limit`` bytes (``None``: unlimited)."""
        self.quota.set_limit(check_scope(scope), limit)

    async def get_quota(self, scope: str) -> QuotaUsage:
        return await self.quota.usage(check_scope(scope))

    async def reconcile_usage(self, scope: str) -> QuotaUsage:
        """Measure ``scope`` from the volume and make that its recorded usage."""
        check_scope(scope)
        async with self.quota.lock(scope):
            await self.quota.set_used(scope, await self.measure_usage(scope))
        return await self.quota.usage(scope)

    async def open_pending(
        self, vfid: VFolderID, relpath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        """A pending write of ``relpath`` whose every byte is charged to the vfolder's quota scope."""
        self.check_writable(vfid)
        scope = vfid.quota_scope_id
        await self.quota.ensure_loaded(scope)
        inner = await self.open_file(vfid, relpath, size_hint=size_hint, sha256=sha256)
        return _QuotaPendingWrite(self, vfid, relpath, inner, self.quota.current(scope))

    async def open_parked(
        self, vfid: VFolderID, parked: str, relpath: str, *, incomplete: bool = False
    ) -> PendingWrite | None:
        """A pending write of ``relpath`` from a file an interrupted import parked, if the backend parks."""
        return None

    async def adopt_parked(
        self, vfid: VFolderID, parked: str, relpath: str, *, incomplete: bool = False
    ) -> PendingWrite | None:
        """:meth:`open_parked` with quota accounting: the parked bytes are already counted as used."""
        self.check_writable(vfid)
        scope = vfid.quota_scope_id
        await self.quota.ensure_loaded(scope)
        inner = await self.open_parked(vfid, parked, relpath, incomplete=incomplete)
        if inner is None:
            return None
        return _QuotaPendingWrite(
            self, vfid, relpath, inner, self.quota.current(scope), already_used=inner.bytes_written
        )

    def exclusive(
        self, vfid: VFolderID, relpath: str, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        """One import at a time into ``relpath`` of the vfolder, where the backend can lock (see
        :meth:`AbstractStorage.exclusive`)."""
        return contextlib.nullcontext()

    async def delete_folder(self, vfid: VFolderID, relpath: str) -> None:  # noqa: B027 - optional
        """Remove a folder of the reserved folder with its content (parked files)."""

    async def add_file(self, vfid: VFolderID, relpath: str, payload: AsyncIterable[bytes]) -> FileInfo:
        """Write ``relpath`` from a chunk stream; it appears only when complete and within quota."""
        pending = await self.open_pending(vfid, relpath)
        try:
            async for chunk in payload:
                await pending.write(chunk)
            await pending.commit()
        except BaseException:
            await run_to_completion(pending.abort())
            raise
        return FileInfo(relpath, pending.bytes_written)

    async def delete_files(self, vfid: VFolderID, relpaths: Sequence[str]) -> None:
        """Remove files (missing ones are not an error), crediting their size back to the scope."""
        self.check_writable(vfid)
        scope = vfid.quota_scope_id
        await self.quota.ensure_loaded(scope)
        freed = 0
        try:
            for relpath in relpaths:
                async with self.quota.lock(scope):
                    info = await self.stat_file(vfid, relpath)
                    await self._delete_file(vfid, relpath)
                    if info is not None:
                        self.quota.removed(scope, info.size)
                        freed += info.size
        finally:
            if freed:
                await self._usage_changed(scope)

    async def _usage_changed(self, scope: str) -> None:  # noqa: B027 - for volumes keeping a record
        """Usage of ``scope`` changed outside an import (deleted files)."""


class StorageVolume(AbstractVolume):
    """A volume whose every vfolder is served by one of this library's storages (files, or keys).

    Subclasses say where a vfolder lives (:meth:`_make_storage`) and how a
    path is checked (:meth:`sanitize_vfpath`); the file operations are the
    storage's, so writes keep its commit/abort guarantee.
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        # One storage per vfolder, so concurrent imports into it share its state (folder ledger, uploads).
        self._storages: dict[VFolderID, AbstractStorage] = {}
        super().__init__(name, **kwargs)

    @abc.abstractmethod
    def _make_storage(self, vfid: VFolderID) -> AbstractStorage: ...

    def _storage(self, vfid: VFolderID) -> AbstractStorage:
        storage = self._storages.get(vfid)
        if storage is None:
            storage = self._storages[vfid] = self._make_storage(vfid)
        return storage

    def exclusive(
        self, vfid: VFolderID, relpath: str, *, wait: float | None = None, on_wait: Callable[[], None] | None = None
    ) -> contextlib.AbstractAsyncContextManager[object]:
        # Files in flight live in the vfolder's partial folder: two imports into one place must take turns.
        storage = self._storage(vfid)
        target = storage.subpath(relpath) if relpath else storage
        return target.exclusive(wait=wait, on_wait=on_wait)

    async def open_file(
        self, vfid: VFolderID, relpath: str, *, size_hint: int | None = None, sha256: str | None = None
    ) -> PendingWrite:
        await self.sanitize_vfpath(vfid, relpath)
        return await self._storage(vfid).open_write(relpath, size_hint=size_hint, sha256=sha256)

    async def open_parked(
        self, vfid: VFolderID, parked: str, relpath: str, *, incomplete: bool = False
    ) -> PendingWrite | None:
        if not self.parks:
            return None
        await self.sanitize_vfpath(vfid, parked)
        await self.sanitize_vfpath(vfid, relpath)
        return await self._storage(vfid).adopt(parked, relpath, incomplete=incomplete)

    async def read_file(self, vfid: VFolderID, relpath: str) -> AsyncIterator[bytes]:
        await self.sanitize_vfpath(vfid, relpath)
        async for chunk in self._storage(vfid).stream_download(relpath):
            yield chunk

    async def _delete_file(self, vfid: VFolderID, relpath: str) -> None:
        await self.sanitize_vfpath(vfid, relpath)
        await self._storage(vfid).delete_file(relpath)

    async def stat_file(self, vfid: VFolderID, relpath: str) -> FileInfo | None:
        await self.sanitize_vfpath(vfid, relpath)
        try:
            return await self._storage(vfid).get_file_info(relpath)
        except StorageFileNotFoundError:
            return None

    async def list_files(self, vfid: VFolderID, relpath: str = "") -> AsyncIterator[FileInfo]:
        storage = self._storage(vfid)
        if relpath.strip("/"):
            await self.sanitize_vfpath(vfid, relpath.strip("/"))
            storage = storage.subpath(relpath)
        async for info in storage.list_files():
            yield info


class _QuotaPendingWrite(PendingWrite):
    """A volume's pending write with every byte charged to the quota scope."""

    def __init__(
        self,
        volume: AbstractVolume,
        vfid: VFolderID,
        path: str,
        inner: PendingWrite,
        reservation: Reservation | None,
        *,
        already_used: int = 0,
    ) -> None:
        super().__init__(path)
        self._volume = volume
        self._vfid = vfid
        self._inner = inner
        self._reservation = reservation
        self._charged = 0
        # A parked file's bytes are on the volume already, counted in its usage under their parked name.
        self._already_used = already_used
        self.bytes_written = already_used
        self._ended = False

    @property
    def _scope(self) -> str:
        return self._vfid.quota_scope_id

    async def write(self, chunk: bytes) -> None:
        self._volume.quota.charge(self._scope, self._reservation, len(chunk), path=self.path)
        self._charged += len(chunk)
        await self._inner.write(chunk)
        self.bytes_written += len(chunk)

    async def commit(self) -> None:
        if self._ended:
            raise StorageError(f"{self.path}: pending write already ended")
        ledger = self._volume.quota
        try:
            # Under the scope's lock, so the size it replaces and the usage
            # record cannot be raced by another import committing the same path.
            async with ledger.lock(self._scope):
                old = await self._volume.stat_file(self._vfid, self.path)
                await self._inner.commit()
                ledger.committed(self._scope, self._reservation, self._charged, old.size if old else 0)
        except BaseException:
            await run_to_completion(self.abort())
            raise
        self._ended = True

    async def park(self, path: str, *, complete: bool = True) -> bool:
        if self._ended or not self._volume.parks or not await self._inner.park(path, complete=complete):
            return False
        self._ended = True
        # The bytes stay on the volume (under the parked name): they are used now, no longer in flight.
        self._volume.quota.committed(self._scope, self._reservation, self._charged, 0)
        return True

    async def abort(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            await self._inner.abort()
        finally:
            self._volume.quota.uncharge(self._scope, self._reservation, self._charged)
            if self._already_used:
                self._volume.quota.removed(self._scope, self._already_used)


class VolumePool:
    """Volumes by name, as the storage proxy configures them."""

    def __init__(self, volumes: Mapping[str, AbstractVolume] | None = None) -> None:
        self._volumes: dict[str, AbstractVolume] = dict(volumes or {})

    def add(self, volume: AbstractVolume) -> None:
        self._volumes[volume.name] = volume

    def get_volume(self, name: str) -> AbstractVolume:
        try:
            return self._volumes[name]
        except KeyError:
            known = ", ".join(sorted(self._volumes)) or "none"
            raise VFolderNotFoundError(f"no volume named {name!r} (configured: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._volumes)

    async def aclose(self) -> None:
        for volume in self._volumes.values():
            await volume.aclose()
