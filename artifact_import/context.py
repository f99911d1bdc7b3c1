"""The context every import step shares, and how a step finds its storage."""

from __future__ import annotations

from typing import Any

import attrs

from .errors import ConfigError
from .model import ArtifactStorageImportStep, ModelTarget
from .storages.base import AbstractStorage, AbstractStoragePool


class StorageTarget:
    """A storage step mapping: a configured storage's name, or a storage itself.

    A name is resolved through the pool (pre-configured storages); an instance
    is used as it is (e.g. a ``VolumeStorageAdapter`` for a user's vfolder).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str | AbstractStorage) -> None:
        self._value = value

    @property
    def value(self) -> str | AbstractStorage:
        return self._value

    def resolve(self, storage_pool: AbstractStoragePool) -> AbstractStorage:
        if isinstance(self._value, AbstractStorage):
            return self._value
        return storage_pool.get_storage(self._value)

    def __repr__(self) -> str:
        shown = self._value if isinstance(self._value, str) else self._value.describe()
        return f"StorageTarget({shown!r})"


@attrs.define
class ImportStepContext:
    """Shared by the DOWNLOAD, VERIFY and ARCHIVE steps of one import.

    Only ARCHIVE must be mapped; DOWNLOAD and VERIFY default to the storage
    of the step after them, which gives the single-pass fast path (each byte
    read from the source once, verified while it is written into the
    destination's pending write). Mapping them to another storage stages the
    files there first.
    """

    model: ModelTarget
    registry_name: str
    storage_pool: AbstractStoragePool
    storage_step_mappings: dict[ArtifactStorageImportStep, StorageTarget]
    #: What each step recorded, keyed by the step's value ("download", ...).
    step_metadata: dict[str, Any] = attrs.field(factory=dict)

    def storage_for(self, step: ArtifactStorageImportStep) -> AbstractStorage:
        order = list(ArtifactStorageImportStep)
        for candidate in order[order.index(step) :]:
            target = self.storage_step_mappings.get(candidate)
            if target is not None:
                return target.resolve(self.storage_pool)
        raise ConfigError("storage_step_mappings has no storage for the ARCHIVE step")
