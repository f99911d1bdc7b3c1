"""The Hugging Face cache's layout, as ``huggingface_hub`` writes and reads it.

::

    $HF_HUB_CACHE/                      (else $HF_HOME/hub, else ~/.cache/huggingface/hub)
      models--ORG--NAME/                 (datasets--..., spaces--...)
        blobs/<sha256 or git sha1>       a file's bytes, named by the ETag the Hub gives it
        snapshots/<commit>/<path>        relative symbolic links to the blobs
        refs/<revision>                  the commit a branch or tag pointed to, without a newline

``scan_cache_dir`` (``hf cache ls``) reads only ``snapshots/`` and ``refs/``
of a repository's folder and follows the links into ``blobs/``; a folder of
another name beside them (``.no_exist/``, ``trees/``, our ``.artifact-import/``)
is not looked at. At the cache's top, every folder but ``.locks`` is taken for
a repository, so nothing of ours lives there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from ...errors import ConfigError
from ...model import REPO_TYPES
from ...paths import path_problem

#: A blob's name: the sha256 of an LFS file, the git blob sha1 of another. Nothing else may name a path.
_BLOB_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """The cache ``huggingface_hub`` uses, read from the environment now (as its ``constants`` do at import):
    ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub``, else ``~/.cache/huggingface/hub``."""
    env = os.environ if env is None else env

    def expand(path: str) -> str:
        return os.path.expandvars(os.path.expanduser(path))

    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    hub = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE") or os.path.join(expand(home), "hub")
    return Path(expand(hub))


def repo_folder(repo_id: str, repo_type: str) -> str:
    """``models--ORG--NAME`` (``huggingface_hub.file_download.repo_folder_name``)."""
    check_repo_id(repo_id)
    if repo_type not in REPO_TYPES:
        raise ConfigError(f"unknown repository type {repo_type!r} (known: {', '.join(REPO_TYPES)})")
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ConfigError(f"invalid repository id {repo_id!r}: expected ORG/NAME or NAME")
    return repo_id


def check_commit(commit: str) -> str:
    """A commit id (40 hexadecimal digits): it names a folder of the cache."""
    if not _COMMIT.fullmatch(commit):
        raise ConfigError(f"invalid commit {commit!r}: expected the 40 hexadecimal digits of a commit id")
    return commit


def check_revision(revision: str) -> str:
    """A branch or tag name as a path under ``refs/``; a name that would leave it is refused."""
    problem = path_problem(revision)
    if problem is not None:
        raise ConfigError(f"invalid revision {revision!r} for the cache's refs/: it {problem}")
    return revision


def is_blob_id(value: str | None) -> bool:
    return value is not None and _BLOB_ID.fullmatch(value) is not None


def blob_path(blob_id: str) -> str:
    """The blob's path in the repository's folder; ``blob_id`` must be one (hexadecimal, see :func:`is_blob_id`)."""
    if not is_blob_id(blob_id):
        raise ValueError(f"not a blob id: {blob_id!r}")
    return f"blobs/{blob_id}"


def snapshot_path(commit: str, path: str = "") -> str:
    return f"snapshots/{commit}/{path}" if path else f"snapshots/{commit}"


def link_target(path: str, blob_id: str) -> str:
    """What ``snapshots/<commit>/<path>`` links to: the blob, relative to the link's folder (as
    ``huggingface_hub`` makes them, so that the cache can be moved). Any folder two levels below the
    repository's folder gives the same target, which lets a snapshot be built elsewhere and renamed in."""
    return "../" * (path.count("/") + 2) + blob_path(blob_id)
