"""Importing again into the same destination: only what is missing or changed moves."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from pathlib import Path

from artifact_import import (
    MANIFEST_PATH,
    ImportResult,
    ObjectStorage,
    PickleVerifier,
    SafetensorsVerifier,
    Verifier,
    import_artifact,
)

from .conftest import fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub, safetensors_header
from .s3server import S3Server

_HEADER = safetensors_header(300_000)
BIG_A = _HEADER + os.urandom(300_000 - len(_HEADER))
BIG_B = os.urandom(200_000)
WEIGHTS = pickle.dumps({"w": b"x" * 50_000})


def fetched(hub: LocalHub) -> list[str]:
    return sorted(path for method, path, _ in hub.requests if method == "GET")


def repo_files() -> dict[str, bytes | int]:
    return {"config.json": b'{"a": 1}', "a.safetensors": BIG_A, "b.bin": BIG_B, "weights.pkl": WEIGHTS}


async def test_the_same_revision_again_fetches_nothing_and_says_so(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    first = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    before = files_under(dest)
    hub.requests.clear()
    events: list[str] = []
    again = await import_artifact(
        f"hf://{repo}", dest, registry=fast_registry(), on_progress=lambda e: events.append(e.state.value)
    )
    assert fetched(hub) == []
    assert again.skipped == len(again.files) == 4
    assert all(f.skipped for f in again.files) and events == ["skipped"] * 4
    assert [(f.path, f.sha256) for f in again.files] == [(f.path, f.sha256) for f in first.files]
    after = files_under(dest)
    assert {p: b for p, b in after.items() if p != MANIFEST_PATH} == {
        p: b for p, b in before.items() if p != MANIFEST_PATH
    }
    assert json.loads(after[MANIFEST_PATH])["commit"] == first.commit


async def test_a_new_revision_fetches_only_changed_files_and_unchanged_lfs_files_are_kept(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    new_b = os.urandom(200_000)
    commit = hub.commit(repo, {**repo_files(), "b.bin": new_b, "extra.json": b"{}"})
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert result.commit == commit
    # Small files carry only a git sha1, which says nothing across commits: fetched again.
    assert fetched(hub) == ["b.bin", "config.json", "extra.json"]
    assert {f.path for f in result.files if f.skipped} == {"a.safetensors", "weights.pkl"}
    assert (dest / "b.bin").read_bytes() == new_b
    manifest = json.loads((dest / MANIFEST_PATH).read_bytes())
    assert manifest["commit"] == commit and len(manifest["files"]) == 5


async def test_a_damaged_or_missing_file_is_fetched_again(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    (dest / "a.safetensors").write_bytes(BIG_A[:1000])
    (dest / "b.bin").unlink()
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert fetched(hub) == ["a.safetensors", "b.bin"]
    assert result.skipped == 2
    assert (dest / "a.safetensors").read_bytes() == BIG_A and (dest / "b.bin").read_bytes() == BIG_B


async def _again_with(hub: LocalHub, tmp_path: Path, verifiers: list[Verifier]) -> ImportResult:
    """Import a repo with checksums only, then again with ``verifiers``."""
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    hub.requests.clear()
    return await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), verifiers=verifiers)


async def test_a_file_without_a_verdict_this_run_requires_is_fetched_and_verified_again(
    hub: LocalHub, tmp_path: Path
) -> None:
    result = await _again_with(hub, tmp_path, [SafetensorsVerifier()])
    assert fetched(hub) == ["a.safetensors"], "the safetensors check did not run on it before"
    assert {v.verifier for f in result.files if f.path == "a.safetensors" for v in f.verdicts} >= {"safetensors"}


async def test_the_pickle_scan_reads_every_file_so_none_is_skipped_without_its_verdict(
    hub: LocalHub, tmp_path: Path
) -> None:
    result = await _again_with(hub, tmp_path, [PickleVerifier()])
    # By content, not by name: a pickle called config.json would be unpickled by whoever loads it as one.
    assert fetched(hub) == ["a.safetensors", "b.bin", "config.json", "weights.pkl"]
    assert all(any(v.verifier == "pickle" for v in f.verdicts) for f in result.files)


async def test_a_manifest_that_is_not_json_means_everything_is_fetched(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    (dest / MANIFEST_PATH).write_text("{ truncated")
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert result.skipped == 0 and len(fetched(hub)) == 4


def test_cli_reports_skipped_files_and_force_fetches_everything(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = str(tmp_path / "dest")
    env = {"HF_ENDPOINT": os.environ["HF_ENDPOINT"]}
    assert run_cli("import", f"hf://{repo}", "--to", dest, env=env).returncode == 0
    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", dest, env=env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith(f"nothing to fetch: all 4 file(s) of hf://{repo}@main"), again.stdout
    assert "already present in" in again.stdout and "/s" not in again.stdout
    assert "already present, skipped: a.safetensors" in again.stderr
    assert fetched(hub) == []
    forced = run_cli("import", f"hf://{repo}", "--to", dest, "--force", "--json", env=env)
    assert json.loads(forced.stdout)["skipped_count"] == 0
    assert len(fetched(hub)) == 4


async def test_an_object_replaced_with_the_same_size_is_caught_by_its_sha256_metadata(
    hub: LocalHub, s3: S3Server
) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    bucket = s3.make_bucket()
    storage = ObjectStorage("objects", s3.endpoint, bucket, "m")
    try:
        await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
        other = os.urandom(len(BIG_B))
        client = s3.endpoint.client(max_connections=1)
        client.put_object(
            bucket, "m/b.bin", io.BytesIO(other), len(other), metadata={"sha256": hashlib.sha256(other).hexdigest()}
        )
        hub.requests.clear()
        result = await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
        assert fetched(hub) == ["b.bin"] and result.skipped == 3
        resp = client.get_object(bucket, "m/b.bin")
        assert resp.read() == BIG_B
        resp.close()
        resp.release_conn()
    finally:
        await storage.aclose()


def test_a_same_size_change_in_place_is_repaired_by_the_next_import(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("re")
    hub.create_repo(repo, repo_files())
    dest = tmp_path / "dest"
    assert run_cli("import", f"hf://{repo}", "--to", str(dest), "-q").returncode == 0
    original = (dest / "b.bin").read_bytes()
    with open(dest / "b.bin", "r+b") as f:  # same size, other bytes: what a stray tool or a bad disk does
        f.write(bytes(b ^ 0xFF for b in original[:64]))
    os.utime(dest / "config.json")  # touched, not changed: read again, found intact, not fetched
    hub.requests.clear()
    proc = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    assert fetched(hub) == ["b.bin"], "only the changed file was fetched again"
    assert json.loads(proc.stdout)["skipped_count"] == len(repo_files()) - 1
    assert (dest / "b.bin").read_bytes() == original
    assert run_cli("verify", str(dest)).returncode == 0
