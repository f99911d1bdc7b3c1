"""Our routes inside the storage proxy: a ``backendai_storage_manager_webapp_v10`` plugin.

Entry point (``pyproject.toml``)::

    [project.entry-points.backendai_storage_manager_webapp_v10]
    artifact-import = "artifact_import.backendai.webapp:ArtifactImportWebappPlugin"

The proxy mounts the application at ``/artifact-import`` of its manager API,
behind its token middleware (``X-BackendAI-Storage-Auth-Token``): ``POST
/artifact-import/import`` and the rest of :mod:`artifact_import.proxy.routes`,
and the manager's own request at ``/artifact-import/v1/registries/huggingface/
import``. Vfolders are the proxy's volumes (by the names of its config),
named storages its storage pool, registries its Hugging Face registries.

With the plugin setting ``replace-huggingface-pipeline = true``, the plugin
also makes the proxy's own Hugging Face route import through artifact-import
when it starts (what the one-line change in its source does).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from ai.backend.common.exception import BackendAIError
from ai.backend.storage.api.v1.registries import huggingface as their_route
from ai.backend.storage.plugin import StorageManagerWebappPlugin
from aiohttp import web

from ..config import ServerSettings
from ..errors import StorageNotFoundError, VFolderNotFoundError
from ..proxy.routes import create_app
from ..registries.base import AbstractRegistry
from ..registries.huggingface import HuggingFaceRegistry
from ..storages.base import AbstractStorage, AbstractStoragePool
from ..verifiers import build_verifiers
from ..volumes.base import AbstractVolume, VolumePool
from .pipeline import create_huggingface_import_pipeline
from .settings import BridgeSettings, current
from .storage import named_storage, volume_of

log = logging.getLogger(__name__)

#: Where the proxy mounts the routes (its ``_init_subapp`` reads ``app["prefix"]``).
PREFIX = "artifact-import"
#: The plugin setting (etcd ``config/plugins/storage_manager_webapp/artifact-import/``) that makes the
#: proxy's own Hugging Face route import through artifact-import, as the one-line change does.
REPLACE_SETTING = "replace-huggingface-pipeline"


def replace_pipeline_factory() -> Any:
    """Make the proxy's Hugging Face route build its pipelines with our factory; the factory it had."""
    # Their route module imports the factory by name and calls it per request: the name is what to replace.
    previous = their_route.create_huggingface_import_pipeline  # type: ignore[attr-defined]
    their_route.create_huggingface_import_pipeline = create_huggingface_import_pipeline  # type: ignore[attr-defined]
    log.info("the storage proxy's Hugging Face imports now run through artifact-import")
    return previous

RootContext = Any
"""The proxy's ``RootContext`` (``volume_pool``, ``storage_pool``, ``local_config``, …)."""


class ArtifactImportWebappPlugin(StorageManagerWebappPlugin):
    """Our import routes as an application the proxy mounts; see the module."""

    config_watch_enabled = False

    def __init__(self, plugin_config: Mapping[str, Any], local_config: Mapping[str, Any]) -> None:
        super().__init__(plugin_config, local_config)
        self._registries: dict[str, AbstractRegistry] = {}
        self._replaced: Any = None

    async def init(self, context: Any | None = None) -> None:
        if str(self.plugin_config.get(REPLACE_SETTING, "")).lower() in ("1", "true", "yes", "on"):
            self._replaced = replace_pipeline_factory()

    async def cleanup(self) -> None:
        if self._replaced is not None:
            their_route.create_huggingface_import_pipeline = self._replaced  # type: ignore[attr-defined]
            self._replaced = None
        for registry in self._registries.values():
            await registry.aclose()

    async def update_plugin_config(self, plugin_config: Mapping[str, Any]) -> None:
        self.plugin_config = plugin_config

    async def create_app(self, cors_options: Any) -> tuple[web.Application, list[Any]]:
        settings = current()
        holder: list[web.Application] = []

        def root() -> RootContext:
            # Set by the proxy's _init_subapp when the application starts, before any request.
            return holder[0]["ctx"]

        self._registries = registries_of(self.local_config, settings)
        app = create_app(
            self._registries,
            storage_pool=ProxyStoragePool(root),
            volume_pool=ProxyVolumePool(root),
            verifiers=build_verifiers(settings.verify),
            settings=ServerSettings(max_concurrent_files=settings.max_concurrent_files),
        )
        holder.append(app)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", web.NotAppKeyWarning)  # the proxy's interface is this string key
            app["prefix"] = PREFIX
        return app, []


def registries_of(local_config: Mapping[str, Any], settings: BridgeSettings) -> dict[str, AbstractRegistry]:
    """Our registries for the proxy's Hugging Face registries (``artifact_registries`` and the legacy list),
    from its config as its plugins see it (``local_config``, field names)."""
    configs: dict[str, Mapping[str, Any]] = {}
    for name, registry in (local_config.get("artifact_registries") or {}).items():
        if str(registry.get("registry_type")) == "huggingface" and registry.get("huggingface"):
            configs[name] = registry["huggingface"]
    for legacy in local_config.get("registries") or []:
        config = legacy.get("config") or {}
        if str(config.get("registry_type")) == "huggingface":
            configs[legacy["name"]] = config
    return {
        name: HuggingFaceRegistry(
            name,
            endpoint=config.get("endpoint"),
            token=config.get("token"),
            retry=settings.retry,
            timeouts=settings.timeouts,
        )
        for name, config in configs.items()
    }


class ProxyVolumePool(VolumePool):
    """The proxy's volumes, by the names of its config, as volumes of ours (made when first asked for)."""

    def __init__(self, root: Callable[[], RootContext]) -> None:
        super().__init__()
        self._root = root

    def get_volume(self, name: str) -> AbstractVolume:
        try:
            return volume_of(self._root().volume_pool.get_volume_by_name(name))
        except BackendAIError:
            known = ", ".join(self.names()) or "none"
            raise VFolderNotFoundError(f"no volume named {name!r} in the storage proxy (configured: {known})") from None

    def names(self) -> list[str]:
        return sorted(self._root().local_config.volume)

    async def aclose(self) -> None:
        pass  # the proxy's volumes are the proxy's to shut down


class ProxyStoragePool(AbstractStoragePool):
    """The proxy's named storages (``VFSStorage``, ``ObjectStorage``) as storages of ours."""

    def __init__(self, root: Callable[[], RootContext]) -> None:
        self._root = root

    def get_storage(self, name: str) -> AbstractStorage:
        try:
            theirs = self._root().storage_pool.get_storage(name)
        except BackendAIError:
            raise StorageNotFoundError(f"no storage named {name!r} in the storage proxy") from None
        return named_storage(theirs)

    def names(self) -> list[str]:
        return sorted(self._root().storage_pool.list_storages())
