"""What the CLI's SOURCE and ``--to`` name, turned into a registry and a storage.

Sources: ``hf://ORG/NAME[@REV]``, ``s3://BUCKET[/PREFIX]`` (endpoint and keys
from the standard AWS variables), ``storage:NAME[/PATH]`` (an object storage
of the config file). Destinations: a directory, ``s3://BUCKET[/PREFIX]``,
``storage:NAME[/PATH]``, ``vfolder:VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH]``
(a vfolder of a volume of the config file), ``hf-cache:[DIR]`` (the Hugging
Face cache huggingface_hub uses, or the one at DIR).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from ..config import Config
from ..errors import ConfigError, StorageNotFoundError
from ..model import ModelTarget
from ..paths import path_problem
from ..registries.base import AbstractRegistry
from ..registries.http import HttpTimeouts, RetryPolicy
from ..registries.huggingface import HuggingFaceRegistry
from ..registries.ranges import ParallelPolicy
from ..registries.s3 import S3Registry
from ..s3 import S3Endpoint
from ..storages.base import AbstractStorage
from ..storages.object import ObjectStorage
from ..storages.vfs import VFSStorage
from ..storages.volume import VolumeStorageAdapter
from ..volumes.base import VFolderRef

if TYPE_CHECKING:
    from ..storages.hfcache import HFCacheStorage

STORAGE_PREFIX = "storage:"
VFOLDER_PREFIX = "vfolder:"
HF_CACHE_PREFIX = "hf-cache:"
_COMMIT = re.compile(r"[0-9a-f]{40}")
DESTINATIONS = (
    "a directory, s3://BUCKET[/PREFIX], storage:NAME[/PATH], vfolder:VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH] "
    "or hf-cache:[DIR]"
)


@attrs.frozen
class HubRepo:
    """Which Hub repository (and commit) the files of another source are (``--hf-repo``, ``--hf-commit``), for
    ``hf-cache:``, which files them under it; ``verify`` needs the repository alone."""

    repo_id: str
    repo_type: str
    commit: str | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, repo: str, commit: str | None = None) -> HubRepo:
        """``[hf://][datasets/|spaces/]ORG/NAME[@REVISION]`` (revision: main) and a commit id."""
        uri = repo if repo.startswith("hf://") else f"hf://{repo}"
        try:
            target = ModelTarget.from_uri(uri)
        except ConfigError:
            raise ConfigError(
                f"{repo!r} is not a Hub repository: expected ORG/NAME, hf://datasets/ORG/NAME or ORG/NAME@REVISION"
            ) from None
        if commit is not None and not _COMMIT.fullmatch(commit):
            raise ConfigError(f"--hf-commit {commit!r}: expected the 40 hexadecimal digits of a commit id")
        return cls(target.repo_id, target.repo_type, commit, target.revision)


def _hf_cache(to: str, hub_repo: HubRepo | None) -> HFCacheStorage:
    from ..storages.hfcache import HFCacheStorage  # loaded only for hf-cache: (ctypes, the cache's layout)

    folder = to[len(HF_CACHE_PREFIX) :]
    if folder:
        _check_directory(folder, what=to)
    cache = HFCacheStorage(
        "hf-cache",
        folder or None,
        repo_id=hub_repo.repo_id if hub_repo else None,
        repo_type=hub_repo.repo_type if hub_repo else "model",
        commit=hub_repo.commit if hub_repo else None,
        revision=hub_repo.revision if hub_repo and hub_repo.commit else None,
    )
    if not folder:
        _check_directory(str(cache.cache_dir), what=f"{to} ({cache.cache_dir})")
    return cache


def _configured(spec: str, config: Config | None) -> AbstractStorage:
    name, _, sub = spec[len(STORAGE_PREFIX) :].partition("/")
    if config is None:
        raise ConfigError(f"{spec!r} names a configured storage: give --config FILE")
    try:
        storage = config.pool().get_storage(name)
    except StorageNotFoundError as exc:
        raise ConfigError(f"{spec!r}: {exc.message} in the config file") from None
    if sub.strip("/"):
        problem = path_problem(sub.strip("/"))
        if problem is not None:
            raise ConfigError(f"{spec!r}: the path {sub!r} {problem}")
        storage = storage.subpath(sub)
    return storage


def _bucket_and_prefix(uri: str) -> tuple[str, str]:
    target = ModelTarget.from_uri(uri)  # validates bucket name and prefix
    bucket, _, prefix = target.repo_id.partition("/")
    return bucket, prefix


def _check_directory(to: str, *, what: str | None = None) -> None:
    """Refuse, before anything is fetched, a destination directory that cannot be one."""
    path = Path(to)
    to = what or to
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            break
    if candidate.is_dir():
        if not os.access(candidate, os.W_OK | os.X_OK):
            raise ConfigError(f"cannot write into {str(candidate)!r} (permission denied): choose another --to")
        return
    what = "a broken symbolic link" if candidate.is_symlink() and not candidate.exists() else "a file"
    if candidate == path:
        raise ConfigError(f"the destination {to!r} is {what}, not a directory: give a directory for --to")
    raise ConfigError(f"the destination {to!r} cannot be created: {str(candidate)!r} is {what}, not a directory")


def open_destination(
    to: str, config: Config | None, env: Mapping[str, str] | None = None, *, hub_repo: HubRepo | None = None
) -> AbstractStorage:
    """The storage ``to`` names. ``hub_repo``: which Hub repository and commit a non-Hub source is, for
    ``hf-cache:`` (which files it under them); refused for any other destination."""
    if not to.strip():
        raise ConfigError(f'the destination is empty (an unset variable in --to "$DEST"?): give {DESTINATIONS}')
    if to.startswith(HF_CACHE_PREFIX):
        return _hf_cache(to, hub_repo)
    if hub_repo is not None:
        raise ConfigError(f"a Hub repository is named for hf-cache: destinations only; {to!r} is not one")
    if to.startswith(STORAGE_PREFIX):
        return _configured(to, config)
    if to.startswith(VFOLDER_PREFIX):
        ref = VFolderRef.parse(to[len(VFOLDER_PREFIX) :])
        if config is None:
            raise ConfigError(f"{to!r} names a vfolder of a configured volume: give --config FILE")
        try:
            volume = config.volume_pool().get_volume(ref.volume)
        except StorageNotFoundError as exc:
            raise ConfigError(f"{to!r}: {exc.message} in the config file") from None
        # Named as the user wrote it: quota and path errors quote this name.
        return VolumeStorageAdapter(to.rstrip("/"), volume, ref.vfid, ref.subpath)
    if to.startswith("s3://"):
        bucket, prefix = _bucket_and_prefix(to)
        return ObjectStorage("s3", S3Endpoint.from_env(dict(env) if env is not None else None), bucket, prefix)
    if "://" in to:
        raise ConfigError(f"unknown destination {to!r}: expected {DESTINATIONS}")
    _check_directory(to)
    return VFSStorage("destination", to)


def open_source(
    uri: str,
    config: Config | None,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    retry: RetryPolicy | None = None,
    timeouts: HttpTimeouts | None = None,
    env: Mapping[str, str] | None = None,
    hub_scan: bool = True,
    parallel: ParallelPolicy | None = None,
    repo_type: str | None = None,
    files: tuple[str, ...] = (),
) -> tuple[ModelTarget, AbstractRegistry]:
    if uri.startswith(STORAGE_PREFIX):
        storage = _configured(uri, config)
        if not isinstance(storage, ObjectStorage):
            raise ConfigError(f"{uri!r}: only object storages can be a source for now")
        repo = f"{storage.bucket}/{storage.prefix}" if storage.prefix else storage.bucket
        model = ModelTarget(repo, "", include, exclude, scheme="s3", files=files)
        return model, S3Registry(endpoint=storage.endpoint, retry=retry, parallel=parallel)
    model = ModelTarget.from_uri(uri, include=include, exclude=exclude, repo_type=repo_type, files=files)
    if model.scheme != "hf" and repo_type is not None:
        raise ConfigError(f"--repo-type applies to hf:// sources, not to {uri!r}")
    if model.scheme == "s3":
        endpoint = S3Endpoint.from_env(dict(env) if env is not None else None)
        return model, S3Registry(endpoint=endpoint, retry=retry, parallel=parallel)
    return model, HuggingFaceRegistry(retry=retry, timeouts=timeouts, hub_scan=hub_scan, parallel=parallel)
