"""A destination's journal of a repository of very many files (the manifest of 200,000 files is 150 MB) is read
one entry a line, never refused for its size: the next import skips what is there, verify checks it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifact_import import MANIFEST_PATH, VFSStorage, import_artifact
from artifact_import.journal import jsonfile
from artifact_import.journal.record import RECORD_PATH, write_record
from artifact_import.model import FileResult, ResolvedArtifact, Verdict

from .conftest import fast_registry, repo_name
from .hub import LocalHub

FILES: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(400)}


async def test_a_manifest_larger_than_a_file_read_whole_still_vouches_for_its_files(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_name("many")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    registry = fast_registry()
    try:
        await import_artifact(f"hf://{repo}", dest, registry=registry)
        manifest = (dest / MANIFEST_PATH).read_bytes()
        # As a 200,000-file manifest is to the bound of a file read whole.
        monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", len(manifest) // 4)
        hub.requests.clear()
        again = await import_artifact(f"hf://{repo}", dest, registry=registry)
    finally:
        await registry.aclose()
    assert again.skipped == len(FILES), "every file is found vouched for: none fetched again"
    assert [r for r in hub.requests if r[0] == "GET"] == []
    assert json.loads(manifest)["files"][0]["path"] == "shard/0000.json"


async def test_the_record_of_many_parked_files_reads_back_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = VFSStorage("d", tmp_path / "d", fsync=False)
    artifact = ResolvedArtifact(source="hf://org/m", repo_id="org/m", revision="main", commit="a" * 40, files=())
    kept = [
        FileResult(f"f/{i:05d}.bin", i, f"{i:064x}", (Verdict("checksum", True, "sha256 matches", {"n": i}),))
        for i in range(3000)
    ]
    await write_record(storage, artifact, kept, [f"g/{i}.bin" for i in range(50)])
    raw = (tmp_path / "d" / RECORD_PATH).read_bytes()
    monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", len(raw) // 10)
    assert await jsonfile.read_json(storage, RECORD_PATH) == json.loads(raw)


async def test_a_journal_file_that_is_not_one_entry_a_line_is_still_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = VFSStorage("d", tmp_path / "d", fsync=False)
    body = json.dumps({"files": [{"path": f"x{i}"} for i in range(2000)]}, indent=2).encode()
    (tmp_path / "d" / ".artifact-import").mkdir(parents=True)
    (tmp_path / "d" / MANIFEST_PATH).write_bytes(body)
    assert (await jsonfile.read_json(storage, MANIFEST_PATH))["files"][1999] == {"path": "x1999"}
    monkeypatch.setattr(jsonfile, "MAX_JSON_BYTES", len(body) // 2)
    with pytest.raises(ValueError, match="larger than"):
        await jsonfile.read_json(storage, MANIFEST_PATH)
