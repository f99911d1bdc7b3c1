"""What ``hf download --local-dir DIR`` keeps beside the files it downloaded, so that it recognises ours.

``huggingface_hub`` keeps, for each file of a ``local_dir`` download,
``DIR/.cache/huggingface/download/<path>.metadata``: three lines, the commit,
the file's ETag on the Hub (the sha256 of an LFS file, the git blob sha1 of
another) and the time it was written. A later ``hf download`` (or
``hf_hub_download``/``snapshot_download`` with ``local_dir``) takes a file as
downloaded when its metadata names the commit asked for (asked for a branch:
when the ETag matches what the Hub answers to a HEAD) and the file is not
newer than that time; without metadata it hashes LFS files again and fetches
the others. An import into a directory from the Hub writes the same metadata
at its commit (see :meth:`VFSStorage.publish`), so a user who switches tools
does not download twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence

from ..model import FileResult, ResolvedArtifact

log = logging.getLogger(__name__)

#: huggingface_hub's folder in a ``local_dir``; ``hf cache verify --local-dir`` ignores it too.
BOOKKEEPING_DIR = ".cache/huggingface"
DOWNLOAD_DIR = f"{BOOKKEEPING_DIR}/download"
#: What huggingface_hub writes there so that git does not pick the folder up.
GITIGNORE = (f"{BOOKKEEPING_DIR}/.gitignore", b"*")


def is_bookkeeping(path: str) -> bool:
    """Whether ``path`` is in huggingface_hub's bookkeeping folder of a ``local_dir`` (not an artifact's file)."""
    return path == BOOKKEEPING_DIR or path.startswith(f"{BOOKKEEPING_DIR}/")


def metadata_path(path: str) -> str:
    return f"{DOWNLOAD_DIR}/{path}.metadata"


def download_metadata(
    artifact: ResolvedArtifact, files: Sequence[FileResult]
) -> Iterator[tuple[FileResult, str, bytes]]:
    """The metadata files ``hf download --local-dir`` would have written for ``files``: each file's result,
    the metadata's path and its bytes, one at a time (those of 200,000 files held at once were some 70 MB of
    an import's peak).

    Nothing when huggingface_hub could not use them (the artifact is not from
    a hub) or when writing them could clobber the artifact itself (it has
    files of its own in ``.cache/huggingface/``, or a file named ``.cache``).
    """
    if not artifact.source.startswith("hf://"):
        return
    if any(f.path == ".cache" or is_bookkeeping(f.path) for f in artifact.files):
        log.info("%s has files of its own under %s/: no download metadata written", artifact.source, BOOKKEEPING_DIR)
        return
    etags = {f.path: f.etag for f in artifact.files if f.etag}
    # After every file is committed: huggingface_hub trusts metadata no older than the file (a second of slack).
    now = time.time()
    for result in files:
        etag = etags.get(result.path)
        if etag:
            yield result, metadata_path(result.path), f"{artifact.commit}\n{etag}\n{now}\n".encode()


def says_the_same(old: bytes, new: bytes) -> bool:
    """Whether two metadata files name the same commit and ETag (a skipped file's can stay as it is)."""
    return old.split(b"\n")[:2] == new.split(b"\n")[:2]
