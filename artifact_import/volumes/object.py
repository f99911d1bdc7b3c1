"""Vfolders in a bucket of an S3-protocol server (MinIO), as seed 000 has them."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath

from ..errors import StorageError, StorageFileNotFoundError, UnsafePathError
from ..paths import RESERVED_DIR, path_problem
from ..s3 import S3Endpoint
from ..storages.lease import LOCK_PATH
from ..storages.object import DEFAULT_MULTIPART_THRESHOLD, DEFAULT_PART_SIZE, ObjectStorage
from ..streams import one_chunk
from .base import StorageVolume, VFolderID, scope_pathname
from .quota import QuotaLedger

log = logging.getLogger(__name__)


class ObjectVolume(StorageVolume):
    """Vfolders as key prefixes ``[<prefix>/]<quota scope>/<folder id>/`` in one bucket.

    The volume has its own endpoint and credentials and may be read-only.
    A vfolder exists as soon as its prefix is used (S3 has no folders).

    Measuring a scope's usage means listing every object under it, a request
    per 1,000 objects. So the volume keeps a usage record per scope, in the
    bucket at ``<prefix>/.artifact-import/usage/<scope>.json``, updated by
    its own writes and deletes; the first use of a scope without a record,
    and :meth:`reconcile_usage`, measure it by a paginated listing. Writes
    by other clients are seen only when reconciled.
    """

    # Parked uploads are invisible to the listing that reconciles usage: not worth the drift.
    parks = False

    def __init__(
        self,
        name: str,
        endpoint: S3Endpoint,
        bucket: str,
        prefix: str = "",
        *,
        read_only: bool = False,
        quotas: Mapping[str, int | None] | None = None,
        read_only_vfolders: Iterable[VFolderID] = (),
        multipart_threshold: int = DEFAULT_MULTIPART_THRESHOLD,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> None:
        self.root = ObjectStorage(
            name, endpoint, bucket, prefix, multipart_threshold=multipart_threshold, part_size=part_size
        )
        super().__init__(name, read_only=read_only, quotas=quotas, read_only_vfolders=read_only_vfolders)

    def _make_ledger(self) -> QuotaLedger:
        return QuotaLedger(self.describe(), self._load_usage, save=self._save_usage)

    def describe(self) -> str:
        where = f"{self.root.bucket}/{self.root.prefix}" if self.root.prefix else self.root.bucket
        return f"volume {self.name} ({self.root.endpoint.display}/{where})"

    def vfolder_prefix(self, vfid: VFolderID) -> str:
        return f"{vfid.scope_pathname}/{vfid.folder_id.hex}"

    def _make_storage(self, vfid: VFolderID) -> ObjectStorage:
        storage = self.root.subpath(self.vfolder_prefix(vfid))
        # A vfolder's reserved files are not removed by this volume (and would count against its quota).
        storage.journal_uploads = False
        return storage

    def _storage(self, vfid: VFolderID) -> ObjectStorage:
        storage = super()._storage(vfid)
        assert isinstance(storage, ObjectStorage)
        return storage

    async def sanitize_vfpath(self, vfid: VFolderID, relpath: str = "") -> PurePosixPath:
        if relpath in ("", "."):
            return PurePosixPath(self.root.key(self.vfolder_prefix(vfid)))
        problem = path_problem(relpath)
        if problem is not None and not problem.startswith("inside the reserved"):
            raise UnsafePathError([(relpath, f"{problem} (in {self.describe_vfolder(vfid)})")])
        return PurePosixPath(self._storage(vfid).key(relpath))

    async def mkdir(self, vfid: VFolderID, relpath: str) -> None:
        # Keys need no folders; the path is still checked, so a bad one fails here as it would on a VFS volume.
        self.check_writable(vfid)
        await self.sanitize_vfpath(vfid, relpath)

    async def vfolder_exists(self, vfid: VFolderID) -> bool:
        await self.root.preflight()
        return True

    async def create_vfolder(self, vfid: VFolderID) -> None:
        self.check_writable(vfid)
        await self.root.preflight()

    async def measure_usage(self, scope: str) -> int:
        """Sum the sizes of every object under the scope, page by page (never a full list in memory)."""
        start = self.root.key(scope_pathname(scope)) + "/"

        def listing() -> int:
            found = self.root.bridge.client.list_objects(self.root.bucket, prefix=start, recursive=True)
            # An import's lock object is not the user's data: it goes when the import ends.
            return sum(o.size or 0 for o in found if not o.is_dir and not str(o.object_name).endswith(f"/{LOCK_PATH}"))

        return await self.root.bridge.call(self.describe(), listing)

    def _record_path(self, scope: str) -> str:
        return f"{RESERVED_DIR}/usage/{scope_pathname(scope)}.json"

    async def _load_usage(self, scope: str) -> int:
        try:
            chunks = [c async for c in self.root.stream_download(self._record_path(scope))]
            record = json.loads(b"".join(chunks))
            return int(record["used"])
        except StorageFileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError):
            log.warning("%s: the usage record of scope %s is unreadable; measuring it", self.describe(), scope)
        used = await self.measure_usage(scope)
        await self._save_usage(scope, used)
        return used

    async def _save_usage(self, scope: str, used: int) -> None:
        if self.read_only:
            return
        record = {"scope": scope, "used": used, "updated": time.time()}
        try:
            await self.root.stream_upload(self._record_path(scope), one_chunk(json.dumps(record).encode()))
        except StorageError as exc:
            # The next process measures again; this one keeps counting in memory.
            log.warning("%s: could not store the usage record of scope %s: %s", self.describe(), scope, exc)

    async def _usage_changed(self, scope: str) -> None:
        usage = await self.quota.usage(scope)
        await self._save_usage(scope, usage.used)

    async def aclose(self) -> None:
        for storage in self._storages.values():
            if isinstance(storage, ObjectStorage) and storage.unaborted:
                await storage.abort_unaborted()
        await self.root.aclose()
