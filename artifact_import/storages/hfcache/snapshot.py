"""A snapshot of the Hugging Face cache made visible whole or not at all.

The links of ``snapshots/<commit>/`` are made in a folder of the reserved
``.artifact-import/`` folder (two levels below the repository's folder, as the
snapshot is, so the relative links point at the same blobs from both places),
together with whatever the snapshot already held for other paths; then that
folder takes the snapshot's place in one rename, or, where the snapshot is
there already, in one atomic exchange (Linux's ``renameat2(RENAME_EXCHANGE)``)
and the old one is removed. A reader of the cache sees the old snapshot or the
new one, never one being filled. Everything here runs in a worker thread, with
folders opened relative to their parent's descriptor and never through a
symbolic link (see :func:`..vfs._open_folder`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Mapping
from pathlib import Path

from ...errors import StorageError
from ...paths import RESERVED_DIR
from ..vfs import _open_folder
from .layout import blob_path, link_target, snapshot_path

log = logging.getLogger(__name__)

#: Where a snapshot is built before it is renamed into place, and where an old one waits to be removed.
STAGING_PREFIX = f"{RESERVED_DIR}/snapshot-"


def publish(root: Path, commit: str, links: Mapping[str, str]) -> bool:
    """Make ``snapshots/<commit>/`` of the repository's folder ``root`` hold a link per entry of ``links``
    (path in the repository → blob id) and what it held before for other paths. False if it already did.

    A path of ``links`` whose blob is missing keeps the link the snapshot has for it, if that one leads to a
    file (a blob ``huggingface_hub`` named otherwise); else the snapshot is left as it was and
    :class:`StorageError` says which.
    """
    real_root = Path(os.path.realpath(root))
    final = snapshot_path(commit)
    current = real_root / final
    targets: dict[str, str] = {}
    for path, blob in links.items():
        if (real_root / blob_path(blob)).is_file():
            targets[path] = link_target(path, blob)
            continue
        kept = _readlink(current / path)
        if kept is None or not (current / path).is_file():
            raise StorageError(f"{path}: its blob {blob_path(blob)} is missing from {root}", path=path)
        targets[path] = kept
    if current.is_dir() and all(_readlink(current / path) == target for path, target in targets.items()):
        return False
    staging = f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
    try:
        _build(real_root, staging, targets, current)
        _swap_in(real_root, staging, final)
    finally:
        # The folder built (if the swap did not happen) or the old snapshot (if it did).
        shutil.rmtree(real_root / staging, ignore_errors=True)
    return True


def remove_staging(root: Path) -> list[str]:
    """Remove the folders of snapshots a killed import was building; their paths."""
    folder = root / RESERVED_DIR
    removed: list[str] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(STAGING_PREFIX.rsplit("/", 1)[1]) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(f"{RESERVED_DIR}/{entry.name}")
    return sorted(removed)


def _readlink(path: Path) -> str | None:
    try:
        return os.readlink(path)
    except OSError:
        return None


def _build(root: Path, staging: str, targets: Mapping[str, str], current: Path) -> None:
    """The new snapshot's folder: a link per ``targets`` entry, and what ``current`` has for other paths."""
    base = staging.split("/")
    for path, target in sorted(targets.items()):
        *folders, name = path.split("/")
        fd = _open_folder(root, [*base, *folders], created=[])
        try:
            os.symlink(target, name, dir_fd=fd)
        finally:
            os.close(fd)
    if current.is_dir():
        _keep_others(root, base, current, targets)
    fd = _open_folder(root, base)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_others(root: Path, base: list[str], current: Path, targets: Mapping[str, str]) -> None:
    """Copy into the new snapshot what ``current`` holds at paths the import does not bring (files of another
    selection of the same commit, or ones ``huggingface_hub`` added): links as links, files as hard links."""
    folders = {"/".join(p.split("/")[:i]) for p in targets for i in range(1, p.count("/") + 1)}

    def taken(rel: str) -> bool:
        parts = rel.split("/")
        return rel in folders or any("/".join(parts[:i]) in targets for i in range(1, len(parts) + 1))

    pending = [""]
    while pending:
        prefix = pending.pop()
        with os.scandir(current / prefix if prefix else current) as entries:
            listed = list(entries)
        for entry in listed:
            rel = f"{prefix}/{entry.name}" if prefix else entry.name
            if entry.is_dir(follow_symlinks=False):
                if rel not in targets:
                    pending.append(rel)
                continue
            if taken(rel):
                continue
            *parents, name = rel.split("/")
            fd = _open_folder(root, [*base, *parents], created=[])
            try:
                if entry.is_symlink():
                    os.symlink(os.readlink(entry.path), name, dir_fd=fd)
                elif stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                    os.link(entry.path, name, dst_dir_fd=fd, follow_symlinks=False)
            finally:
                os.close(fd)


_RENAME_EXCHANGE = 2


def _exchange(src_dir: int, src: str, dst_dir: int, dst: str) -> bool:
    """Swap ``src`` and ``dst`` (names in the folders of those descriptors) atomically; False where the system
    cannot (not Linux, an old kernel or libc, a filesystem without it)."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(src_dir, os.fsencode(src), dst_dir, os.fsencode(dst), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _swap_in(root: Path, staging: str, final: str) -> None:
    """Put ``staging`` at ``final``; the snapshot that was there (if any) ends at ``staging``. Both are renamed
    relative to descriptors of their folders, so a folder swapped for a link meanwhile redirects nothing."""
    *src_parent, src = staging.split("/")
    *dst_parent, dst = final.split("/")
    src_dir = _open_folder(root, src_parent)
    try:
        dst_dir = _open_folder(root, dst_parent, created=[])  # snapshots/, made if missing
        try:
            try:
                os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise StorageError(f"cannot put the snapshot in place at {root / final}: {exc.strerror}") from exc
                if not _exchange(src_dir, src, dst_dir, dst):
                    # Not atomic: for an instant the snapshot is missing (never half there).
                    aside = f"{src}-old"
                    os.rename(dst, aside, src_dir_fd=dst_dir, dst_dir_fd=src_dir)
                    os.rename(src, dst, src_dir_fd=src_dir, dst_dir_fd=dst_dir)
                    os.rename(aside, src, src_dir_fd=src_dir, dst_dir_fd=src_dir)
            with contextlib.suppress(OSError):
                os.fsync(dst_dir)
        finally:
            os.close(dst_dir)
    finally:
        os.close(src_dir)
