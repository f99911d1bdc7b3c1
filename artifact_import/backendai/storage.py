"""The storage proxy's storage targets as storages of ours.

A step mapped to a vfolder (their ``VFolderStorage``, one per step as their
``StorageMappingResolver`` makes them) or to a named storage of their pool
(``VFSStorage``, ``ObjectStorage``) becomes one of our storages, the same
object for every step that maps to the same place: then DOWNLOAD, VERIFY and
ARCHIVE into one vfolder are one pass, verified before anything is visible.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from ai.backend.common.artifact_storage import AbstractStorage as TheirStorage
from ai.backend.common.artifact_storage import AbstractStoragePool as TheirStoragePool
from ai.backend.storage.data.storage.types import StorageTarget as TheirStorageTarget
from ai.backend.storage.storages.object_storage import ObjectStorage as TheirObjectStorage
from ai.backend.storage.storages.vfolder_storage import VFolderStorage as TheirVFolderStorage
from ai.backend.storage.storages.vfs_storage import VFSStorage as TheirVFSStorage
from ai.backend.storage.volumes.abc import AbstractVolume as TheirVolume

from ..errors import ConfigError
from ..s3 import S3Credentials, S3Endpoint
from ..storages.base import AbstractStorage
from ..storages.object import ObjectStorage
from ..storages.vfs import VFSStorage
from ..storages.volume import VolumeStorageAdapter
from ..volumes.base import VFolderID
from .ids import our_vfid
from .volume import BackendAIVolume

#: One volume of ours per volume of theirs, so that concurrent imports into a quota scope share its ledger.
_volumes: weakref.WeakKeyDictionary[TheirVolume, BackendAIVolume] = weakref.WeakKeyDictionary()
#: One storage of ours per named storage of theirs, so that concurrent imports share its state.
_named: weakref.WeakKeyDictionary[TheirStorage, AbstractStorage] = weakref.WeakKeyDictionary()


def volume_of(volume: TheirVolume) -> BackendAIVolume:
    """Our volume over ``volume`` (one of the storage proxy's), made once."""
    ours = _volumes.get(volume)
    if ours is None:
        ours = _volumes[volume] = BackendAIVolume(volume.mount_path.name or str(volume.mount_path), volume)
    return ours


class BridgedVFolderStorage(VolumeStorageAdapter):
    """A vfolder of one of the proxy's volumes as a storage of ours (the design's ``VolumeStorageAdapter``),
    which also sweeps, under the destination's lock, the part files imports killed before cleaning up left."""

    def __init__(self, name: str, volume: BackendAIVolume, vfid: VFolderID, subpath: str = "") -> None:
        super().__init__(name, volume, vfid, subpath)
        self.bridge = volume
        self.root_subpath = subpath.strip("/")

    def subpath(self, path: str) -> BridgedVFolderStorage:
        inner = path.strip("/")
        joined = f"{self.root_subpath}/{inner}" if self.root_subpath and inner else self.root_subpath or inner
        return BridgedVFolderStorage(self.name, self.bridge, self.vfid, joined)

    async def remove_leftovers(self) -> list[str]:
        return await self.bridge.remove_leftovers(self.vfid, self.root_subpath)

    async def local_root(self) -> Path:
        return await self.bridge.sanitize_vfpath(self.vfid, self.root_subpath)


class StorageResolver:
    """Their step targets, resolved through ``pool``, as storages of ours."""

    def __init__(self, pool: TheirStoragePool) -> None:
        self._pool = pool
        #: Within one import: a vfolder is one storage, whichever of their adapters names it.
        self._vfolders: dict[tuple[int, VFolderID], BridgedVFolderStorage] = {}

    def resolve(self, target: TheirStorageTarget) -> AbstractStorage:
        theirs = target.resolve_storage(self._pool)
        if isinstance(theirs, TheirVFolderStorage):
            # Their adapter keeps its volume and vfolder private: there is no public way to reach them.
            volume = volume_of(theirs._volume)
            vfid = our_vfid(theirs._vfolder_id)
            key = (id(volume), vfid)
            found = self._vfolders.get(key)
            if found is None:
                found = self._vfolders[key] = BridgedVFolderStorage(theirs.name, volume, vfid)
            return found
        return named_storage(theirs)


def named_storage(theirs: TheirStorage) -> AbstractStorage:
    """Ours for a named storage of the proxy's pool, made once."""
    ours = _named.get(theirs)
    if ours is None:
        ours = _named[theirs] = _make_named(theirs)
    return ours


def _make_named(theirs: TheirStorage) -> AbstractStorage:
    if isinstance(theirs, TheirVFSStorage):
        return VFSStorage(theirs.name, theirs.base_path)
    if isinstance(theirs, TheirObjectStorage):
        return ObjectStorage(theirs.name, _endpoint(theirs), theirs._bucket)
    raise ConfigError(
        f"storage {theirs.name!r} is a {type(theirs).__name__}: artifact-import imports into vfolders, VFS "
        "storages and object storages of the storage proxy"
    )


def _endpoint(theirs: TheirObjectStorage) -> S3Endpoint:
    # Their ObjectStorage keeps its configuration in private attributes.
    config: dict[str, Any] = {k: getattr(theirs, f"_{k}", None) for k in ("endpoint", "access_key", "secret_key")}
    credentials = (
        S3Credentials(config["access_key"], config["secret_key"])
        if config["access_key"] and config["secret_key"]
        else None
    )
    return S3Endpoint(str(config["endpoint"]), credentials, getattr(theirs, "_region", None) or "us-east-1")
