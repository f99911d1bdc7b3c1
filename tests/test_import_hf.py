"""Hugging Face Hub → local directory through the library API, against the local hub."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import pytest

from artifact_import import (
    MANIFEST_PATH,
    AccessDeniedError,
    ArtifactStorageImportStep,
    DownloadError,
    FileState,
    ImportPipeline,
    ImportStepContext,
    IntegrityError,
    ModelTarget,
    ProgressEvent,
    ReadOnlyStorageError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SourceError,
    StoragePool,
    StorageTarget,
    UnsafePathError,
    VFSStorage,
    import_artifact,
)

from .conftest import fast_registry, files_under, repo_name
from .hub import LocalHub

Step = ArtifactStorageImportStep

NESTED: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "README.md": b"# model\n",
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
    "tokenizer/extra/merges.txt": b"a b\n",
    "model.safetensors": 3 * 1024 * 1024 + 11,
    "weights/shard-1.bin": 200 * 1024,
    "empty.txt": b"",
}


def _expected(hub: LocalHub, repo: str) -> dict[str, bytes]:
    commit = hub.repos[repo].refs["main"]
    return {path: f.disk.read_bytes() for path, f in hub.repos[repo].commits[commit].items()}


async def test_nested_repo_lands_byte_for_byte_with_a_manifest(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    commit = hub.create_repo(repo, NESTED)
    dest = tmp_path / "dest"
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())

    on_disk = files_under(dest)
    manifest = json.loads(on_disk.pop(MANIFEST_PATH))
    assert on_disk == _expected(hub, repo)
    assert result.commit == commit
    assert manifest["source"] == f"hf://{repo}" and manifest["commit"] == commit
    assert {f["path"]: (f["size"], f["sha256"]) for f in manifest["files"]} == {
        p: (len(b), hashlib.sha256(b).hexdigest()) for p, b in on_disk.items()
    }
    # Every file was checked against a published digest, not just its size.
    details = {f.path: f.verdicts[0].detail for f in result.files}
    assert details["model.safetensors"] == "sha256 matches"
    assert details["config.json"] == "git blob sha1 matches"


async def test_include_and_exclude_select_files(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    result = await import_artifact(
        f"hf://{repo}",
        tmp_path,
        include=["*.json", "tokenizer/"],
        exclude=["tokenizer/extra/*"],
        registry=fast_registry(),
    )
    assert sorted(f.path for f in result.files) == ["config.json", "tokenizer/tokenizer.json"]
    assert set(files_under(tmp_path)) == {"config.json", "tokenizer/tokenizer.json", MANIFEST_PATH}


async def test_filters_that_select_nothing_fail_clearly(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    with pytest.raises(SourceError, match="no files to import with the given --include/--exclude"):
        await import_artifact(f"hf://{repo}", tmp_path, include=["*.gguf"], registry=fast_registry())
    assert list(tmp_path.iterdir()) == []


async def test_revision_is_pinned_to_a_commit_by_tag_and_by_id(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    first = hub.create_repo(repo, {"w.bin": b"version one"}, tags=["v1"])
    hub.commit(repo, {"w.bin": b"version two"})
    by_tag = await import_artifact(f"hf://{repo}@v1", tmp_path / "tag", registry=fast_registry())
    by_id = await import_artifact(f"hf://{repo}@{first}", tmp_path / "id", registry=fast_registry())
    latest = await import_artifact(f"hf://{repo}", tmp_path / "main", registry=fast_registry())
    assert by_tag.commit == by_id.commit == first != latest.commit
    assert (tmp_path / "tag/w.bin").read_bytes() == b"version one"
    assert (tmp_path / "id/w.bin").read_bytes() == b"version one"
    assert (tmp_path / "main/w.bin").read_bytes() == b"version two"


async def test_a_branch_moving_mid_import_does_not_mix_revisions(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    old = hub.create_repo(repo, {"a.bin": 256 * 1024, "b.bin": 256 * 1024})
    hub.faults.slow_bps = 2 * 1024 * 1024
    moved = asyncio.Event()

    def on_progress(event: ProgressEvent) -> None:
        if event.state is FileState.RUNNING and event.bytes_done > 0 and not moved.is_set():
            hub.commit(repo, {"a.bin": b"new a", "b.bin": b"new b"})
            moved.set()

    result = await import_artifact(
        f"hf://{repo}", tmp_path, registry=fast_registry(), on_progress=on_progress, max_concurrent_files=1
    )
    assert moved.is_set()
    assert result.commit == old
    on_disk = files_under(tmp_path)
    on_disk.pop(MANIFEST_PATH)
    assert on_disk == {p: f.disk.read_bytes() for p, f in hub.repos[repo].commits[old].items()}


async def test_corrupted_byte_fails_and_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.flip_byte["model.safetensors"] = 2 * 1024 * 1024
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError) as info:
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert info.value.path == "model.safetensors"
    assert "model.safetensors" in str(info.value) and "sha256 mismatch" in str(info.value)
    assert not dest.exists(), "nothing of the import may remain, not even its folder"


async def test_corrupted_small_file_fails_on_its_git_sha1(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.flip_byte["config.json"] = 0
    with pytest.raises(IntegrityError, match=r"config\.json.*git blob sha1 mismatch"):
        await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry())
    assert files_under(tmp_path) == {}


async def test_dropped_connection_resumes_with_range(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.drop_after["model.safetensors"] = [1_000_000, 500_000]
    result = await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry())
    gets = [r for r in hub.requests if r[1] == "model.safetensors"]
    # Both resumes continue where the data stopped, not from byte 0 (some of the
    # dropped response may still have arrived, so the offset is at least that).
    assert len(gets) == 3 and gets[0][2] is None
    first_resume = int(gets[1][2].removeprefix("bytes=").rstrip("-"))
    second_resume = int(gets[2][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < first_resume <= 1_000_000
    assert first_resume < second_resume <= first_resume + 500_000
    assert (tmp_path / "model.safetensors").read_bytes() == _expected(hub, repo)["model.safetensors"]
    assert next(f for f in result.files if f.path == "model.safetensors").verdicts[0].ok


async def test_server_ignoring_range_still_yields_identical_bytes(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.drop_after["model.safetensors"] = [1_500_000]
    hub.faults.ignore_range = True
    await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry())
    assert (tmp_path / "model.safetensors").read_bytes() == _expected(hub, repo)["model.safetensors"]


async def test_5xx_and_429_are_retried_honouring_retry_after(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.errors["model.safetensors"] = [(503, None), (429, "1"), (500, None)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry())
    assert loop.time() - started >= 1.0, "Retry-After: 1 must be waited out"
    assert (tmp_path / "model.safetensors").read_bytes() == _expected(hub, repo)["model.safetensors"]
    assert len([r for r in hub.requests if r[1] == "model.safetensors"]) == 4


async def test_retries_exhausted_fail_cleanly_and_leave_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.errors["weights/shard-1.bin"] = [(500, None)] * 10
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as info:
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(max_attempts=3))
    assert info.value.path == "weights/shard-1.bin"
    assert "after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert not dest.exists()


async def test_unsafe_names_in_the_listing_refuse_the_whole_import(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, {"ok.json": b"{}", "../escape.bin": b"x", "sub/..\\win.bin": b"y", "/abs.bin": b"z"})
    dest = tmp_path / "dest"
    with pytest.raises(UnsafePathError) as info:
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert {p for p, _ in info.value.offending} == {"../escape.bin", "sub/..\\win.bin", "/abs.bin"}
    assert not dest.exists()
    assert not list(tmp_path.parent.rglob("escape.bin"))
    assert hub.requests == [], "no file body may be requested"


async def test_a_symlink_out_of_the_destination_refuses_the_import_before_any_download(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name()
    hub.create_repo(repo, {"ok.json": b"{}", "weights/model.bin": 4096})
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "weights").symlink_to(outside)
    with pytest.raises(UnsafePathError) as info:
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert info.value.offending == (("weights/model.bin", "resolves outside the storage root"),)
    assert hub.requests == [], "no file body may be requested"
    assert list(outside.iterdir()) == [] and sorted(p.name for p in dest.iterdir()) == ["weights"]


async def test_unknown_repository(hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFoundError, match=r"hf://nobody/nothing@main: repository not found.*HF_TOKEN"):
        await import_artifact("hf://nobody/nothing", tmp_path, registry=fast_registry())


async def test_unknown_revision(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, {"a.txt": b"a"})
    with pytest.raises(RevisionNotFoundError, match=rf"hf://{repo}@nope: revision 'nope' not found"):
        await import_artifact(f"hf://{repo}@nope", tmp_path, registry=fast_registry())


async def test_private_repository_needs_a_token(hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED, token="hf_secret_token_123")
    with pytest.raises(RepositoryNotFoundError, match="HF_TOKEN"):
        await import_artifact(f"hf://{repo}", tmp_path / "a", registry=fast_registry())
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_123")
    # LFS files redirect to another host; the hub refuses any request that carries the token there.
    result = await import_artifact(f"hf://{repo}", tmp_path / "b", registry=fast_registry())
    assert len(result.files) == len(NESTED)


async def test_gated_repository_without_token_says_what_to_do(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED, gated=True)
    with pytest.raises(AccessDeniedError) as info:
        await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry())
    message = str(info.value)
    assert f"hf://{repo}@main" in message and "gated" in message and "HF_TOKEN" in message
    assert files_under(tmp_path) == {}


async def test_read_only_destination_is_refused_before_any_request(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    with pytest.raises(ReadOnlyStorageError):
        await import_artifact(f"hf://{repo}", VFSStorage("ro", tmp_path, read_only=True), registry=fast_registry())
    assert hub.requests == []


async def test_staged_mapping_downloads_to_staging_then_archives(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    pool = StoragePool(
        {"staging": VFSStorage("staging", tmp_path / "staging"), "archive": VFSStorage("archive", tmp_path / "archive")}
    )
    registry = fast_registry()
    context = ImportStepContext(
        model=ModelTarget(repo),
        registry_name=registry.name,
        storage_pool=pool,
        storage_step_mappings={
            Step.DOWNLOAD: StorageTarget("staging"),
            Step.VERIFY: StorageTarget("staging"),
            Step.ARCHIVE: StorageTarget("archive"),
        },
    )
    steps_seen: set[tuple[str, Step | None]] = set()
    result = await ImportPipeline({registry.name: registry}).run(
        context, lambda e: steps_seen.add((e.path, e.step)) if e.state is FileState.RUNNING else None
    )
    await registry.aclose()
    archived = files_under(tmp_path / "archive")
    archived.pop(MANIFEST_PATH)
    assert archived == _expected(hub, repo)
    assert not (tmp_path / "staging").exists(), "staged copies and the folders made for them are removed"
    assert ("config.json", Step.DOWNLOAD) in steps_seen and ("config.json", Step.ARCHIVE) in steps_seen
    assert context.step_metadata["download"]["commit"] == result.commit
    assert context.step_metadata["verify"]["verifiers"] == ["checksum"]


async def test_staged_mapping_verifies_what_was_staged(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.flip_byte["weights/shard-1.bin"] = 7
    registry = fast_registry()
    context = ImportStepContext(
        model=ModelTarget(repo),
        registry_name=registry.name,
        storage_pool=StoragePool(),
        storage_step_mappings={
            Step.DOWNLOAD: StorageTarget(VFSStorage("staging", tmp_path / "staging")),
            Step.ARCHIVE: StorageTarget(VFSStorage("archive", tmp_path / "archive")),
        },
    )
    with pytest.raises(IntegrityError, match=r"weights/shard-1\.bin"):
        await ImportPipeline({registry.name: registry}).run(context)
    await registry.aclose()
    assert not (tmp_path / "staging").exists()
    assert not (tmp_path / "archive").exists()


async def test_cancelling_an_import_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.slow_bps = 512 * 1024
    started = asyncio.Event()
    dest = tmp_path / "dest"

    def on_progress(event: ProgressEvent) -> None:
        if event.state is FileState.RUNNING and event.bytes_done > 0:
            started.set()

    task = asyncio.create_task(import_artifact(f"hf://{repo}", dest, registry=fast_registry(), on_progress=on_progress))
    await asyncio.wait_for(started.wait(), 30)
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not dest.exists()


async def test_progress_reports_bytes_and_states_per_file(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    events: list[ProgressEvent] = []
    await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry(), on_progress=events.append)
    for path, content in _expected(hub, repo).items():
        mine = [e for e in events if e.path == path]
        states = [e.state for e in mine]
        assert states[0] is FileState.QUEUED and states[-1] is FileState.DONE
        assert FileState.VERIFIED in states
        running = [e.bytes_done for e in mine if e.state is FileState.RUNNING]
        assert running == sorted(running) and running[-1] == len(content)
        assert all(e.bytes_total == len(content) for e in mine)


async def test_lfs_redirect_target_with_a_signature_never_appears_in_errors(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.errors["model.safetensors"] = [(502, None)] * 10
    with pytest.raises(DownloadError) as info:
        await import_artifact(f"hf://{repo}", tmp_path, registry=fast_registry(max_attempts=2))
    assert "Signature" not in str(info.value) and "/lfs/" not in str(info.value)


async def test_a_stalled_transfer_times_out_and_resumes(hub: LocalHub, tmp_path: Path) -> None:
    from artifact_import import HttpTimeouts, HuggingFaceRegistry, RetryPolicy

    repo = repo_name()
    hub.create_repo(repo, NESTED)
    hub.faults.stall_after["model.safetensors"] = [1_200_000]
    hub.faults.stall_seconds = 20
    registry = HuggingFaceRegistry(
        retry=RetryPolicy(max_attempts=3, backoff_base=0.01), timeouts=HttpTimeouts(read=0.5)
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await import_artifact(f"hf://{repo}", tmp_path, registry=registry)
    finally:
        await registry.aclose()
    assert loop.time() - started < 10, "the stall must be cut short by the read timeout, not waited out"
    ranges = [r[2] for r in hub.requests if r[1] == "model.safetensors"]
    assert len(ranges) == 2 and ranges[1] == "bytes=1200000-"
    assert (tmp_path / "model.safetensors").read_bytes() == _expected(hub, repo)["model.safetensors"]
