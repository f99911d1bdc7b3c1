"""A destination's journal of a repository of very many files (the manifest of 200,000 files is 150 MB) is read
one entry a line, never refused for its size: the next import skips what is there, verify checks it."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
from pathlib import Path

import attrs
import pytest

from artifact_import import MANIFEST_PATH, VFSStorage, import_artifact
from artifact_import.journal import jsonfile
from artifact_import.journal.record import RECORD_PATH, write_record
from artifact_import.model import OWN_DIGEST, FileResult, ResolvedArtifact, Verdict
from artifact_import.verdictpool import VerdictPool

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


async def test_the_results_of_many_files_share_their_verdicts_and_say_them_whole(hub: LocalHub, tmp_path: Path) -> None:
    """200,000 small files are held until the commit: alike verdicts (a matching checksum among them) must be one
    object each, or they were a third of what the import held per file; yet every reader sees them whole."""
    repo = repo_name("alike")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    registry = fast_registry()
    try:
        result = await import_artifact(f"hf://{repo}", dest, registry=registry)
        written = (dest / MANIFEST_PATH).read_bytes()
        again = await import_artifact(f"hf://{repo}", dest, registry=registry)
    finally:
        await registry.aclose()
    for made in (result, again):  # as the import makes them, and as read back from the manifest
        kept = {id(v) for f in made.files for v in f.kept_verdicts}
        tuples = {id(f.kept_verdicts) for f in made.files}
        assert len(kept) <= 4 and len(tuples) <= 2, (len(kept), len(tuples))
    assert again.skipped == len(FILES)
    entries = {e["path"]: e for e in json.loads(written)["files"]}
    for f in result.files:
        checksum = f.verdicts[0]
        assert checksum.verifier == "checksum" and dict(checksum.data) == {"sha256": f.sha256, "size": f.size}
        assert f.to_dict()["verdicts"][0]["data"] == {"sha256": f.sha256, "size": f.size}
        assert entries[f.path] == f.to_dict()
        assert hashlib.sha256(FILES[f.path]).hexdigest() == entries[f.path]["verdicts"][0]["data"]["sha256"]  # type: ignore[arg-type]


def test_a_checksum_verdict_that_says_more_than_the_result_is_kept_as_it_says() -> None:
    """Only data that is exactly the result's own sha256 and size is left to the result: a verdict saying another
    digest (a mismatch a caller recorded, a verifier of ours that adds a field) keeps its own words."""
    digest = "ab" * 32
    other = Verdict("checksum", False, "sha256 mismatch", {"sha256": "cd" * 32, "size": 5})
    more = Verdict("checksum", True, "sha256 matches", {"sha256": digest, "size": 5, "md5": "x"})
    mine = Verdict("checksum", True, "sha256 matches", {"sha256": digest, "size": 5})
    for verdict in (other, more):
        result = FileResult("a.bin", 5, digest, (verdict,))
        assert result.verdicts == (verdict,) and result.kept_verdicts[0] is verdict
    compact = FileResult("a.bin", 5, digest, (mine,))
    assert compact.kept_verdicts[0].data is OWN_DIGEST
    assert compact == FileResult("a.bin", 5, digest, compact.kept_verdicts)
    assert compact.verdicts == (mine,) and attrs.evolve(compact, stamp="s").verdicts == (mine,)
    # A result that travels (pickled to a worker, copied) keeps its checksum's data.
    for moved in (pickle.loads(pickle.dumps(compact)), copy.deepcopy(compact)):
        assert moved == compact and moved.verdicts == (mine,)
    # The same verdict of another digest is not the same verdict.
    assert FileResult("a.bin", 5, "ef" * 32, (mine,)).verdicts == (mine,)


def test_a_hostile_variety_of_verdicts_leaves_the_pool_bounded() -> None:
    pool = VerdictPool()
    for i in range(VerdictPool.LIMIT * 2):
        pool.verdicts([Verdict("x", True, f"odd {i}"), Verdict("y", True, "alike")], "0" * 64, i)
    assert len(pool._verdicts) <= VerdictPool.LIMIT and len(pool._tuples) <= VerdictPool.LIMIT
    alike = {id(pool.verdict(Verdict("y", True, "alike"))) for _ in range(3)}
    assert len(alike) == 1
