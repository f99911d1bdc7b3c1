"""Vfolder ids between the storage proxy's types and ours (the same text: ``user:<uuid>/<hex>``)."""

from __future__ import annotations

from ai.backend.common.types import QuotaScopeID
from ai.backend.common.types import VFolderID as TheirVFolderID

from ..errors import ConfigError
from ..volumes.base import VFolderID


def their_vfid(vfid: VFolderID) -> TheirVFolderID:
    return TheirVFolderID(their_scope(vfid.quota_scope_id), vfid.folder_id)


def their_scope(scope: str) -> QuotaScopeID:
    try:
        return QuotaScopeID.parse(scope)
    except ValueError:
        raise ConfigError(
            f"quota scope {scope!r}: the storage proxy's volumes know only user:UUID and project:UUID scopes"
        ) from None


def our_vfid(vfid: TheirVFolderID) -> VFolderID:
    if vfid.quota_scope_id is None:
        raise ConfigError(
            f"vfolder {vfid}: a vfolder without a quota scope (laid out before quota scopes) cannot be an "
            "import destination; migrate it first"
        )
    return VFolderID(str(vfid.quota_scope_id), vfid.folder_id)
