"""Validation of the relative file paths that come from a source listing.

A listing is untrusted input: a name in it decides where bytes land. Only
plain, forward-slashed, relative paths made of real segments are accepted.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from .errors import UnsafePathError

#: Names under this folder belong to artifact-import (manifest, staging).
RESERVED_DIR = ".artifact-import"
#: What an import that did not finish left for the next one (see ``resume``).
PARTIAL_DIR = f"{RESERVED_DIR}/partial"


def incomplete_path(path: str) -> str:
    """Where a file's bytes live while they arrive: a name the next import finds, whatever ended this one."""
    return f"{PARTIAL_DIR}/incomplete/{path}"


def is_reserved(path: str) -> bool:
    return path == RESERVED_DIR or path.startswith(f"{RESERVED_DIR}/")


_DRIVE = re.compile(r"^[A-Za-z]:")


#: The longest file or folder name (bytes) of ext4, XFS, btrfs, ZFS, NTFS, APFS.
NAME_MAX = 255


def path_problem(path: str) -> str | None:
    """Why ``path`` is unsafe as a destination-relative file path, or ``None``."""
    if not path:
        return "empty name"
    if "\x00" in path:
        return "contains NUL"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "absolute path"
    if _DRIVE.match(path):
        return "drive-qualified path"
    segments = path.split("/")
    if any(seg == ".." for seg in segments):
        return "contains a '..' segment"
    if any(seg in ("", ".") for seg in segments):
        return "contains an empty or '.' segment"
    if segments[0] == RESERVED_DIR:
        return f"inside the reserved folder {RESERVED_DIR}/"
    if any(len(seg.encode()) > NAME_MAX for seg in segments):
        # No common filesystem takes it: refused before a byte moves, not by the write half way.
        return f"has a name longer than {NAME_MAX} bytes"
    return None


def check_relpath(path: str) -> str:
    """Return ``path`` if it is safe, else raise :class:`UnsafePathError`."""
    problem = path_problem(path)
    if problem is not None:
        raise UnsafePathError([(path, problem)])
    return path


def _fold(path: str) -> str:
    """What a case-insensitive, normalising filesystem (macOS, some SMB and NFS servers) makes of ``path``:
    ``é`` composed (NFC) and decomposed (NFD) name the same file there, as ``A`` and ``a`` do."""
    return unicodedata.normalize("NFC", path).casefold()


def check_listing(paths: Iterable[str]) -> None:
    """Refuse a whole listing if any entry is unsafe or two entries collide.

    Collisions matter because a file ``a`` and a file ``a/b`` cannot both
    exist, and names that differ only in case or in Unicode normalisation
    overwrite each other on case-insensitive or normalising filesystems.
    """
    offending: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    files: list[str] = []
    for path in paths:
        problem = path_problem(path)
        if problem is not None:
            offending.append((path, problem))
            continue
        folded = _fold(path)
        if folded in seen:
            offending.append((path, f"collides with {seen[folded]!r}"))
            continue
        seen[folded] = path
        files.append(path)
    folders = {_fold(path).rsplit("/", 1)[0] for path in files if "/" in path}
    expanded: set[str] = set()
    for folder in folders:
        parts = folder.split("/")
        expanded.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    offending.extend((path, "is both a file and a folder") for path in files if _fold(path) in expanded)
    if offending:
        raise UnsafePathError(offending)
