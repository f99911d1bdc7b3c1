"""The manifest written beside an imported artifact: what came from where, with digests."""

from __future__ import annotations

import datetime
import json
from collections.abc import Sequence
from typing import Any

from . import __version__
from .model import FileResult, ResolvedArtifact
from .paths import RESERVED_DIR

MANIFEST_PATH = f"{RESERVED_DIR}/manifest.json"
MANIFEST_FORMAT = 1


def build_manifest(artifact: ResolvedArtifact, files: Sequence[FileResult]) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "tool": f"artifact-import {__version__}",
        "source": artifact.source,
        "revision": artifact.revision,
        "commit": artifact.commit,
        "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "files": [f.to_dict() for f in sorted(files, key=lambda f: f.path)],
    }


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
