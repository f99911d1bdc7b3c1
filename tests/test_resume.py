"""An interrupted import keeps what it verified; the next one finishes the rest."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from artifact_import import (
    DownloadError,
    FileState,
    IntegrityError,
    ObjectStorage,
    ProgressEvent,
    VFolderID,
    VFSVolume,
    VolumeStorageAdapter,
    import_artifact,
)
from artifact_import.journal import MANIFEST_PATH as MANIFEST
from artifact_import.journal import RECORD_PATH
from artifact_import.paths import PARTIAL_DIR
from artifact_import.storages.object import MiB, upload_token_path
from artifact_import.storages.vfs import PART_SUFFIX

from .conftest import fast_registry, files_under, repo_name
from .hub import LocalHub
from .s3server import S3Server

FILES: dict[str, bytes | int] = {"config.json": b'{"a": 1}', "tok/vocab.json": b"{}", "big.bin": 4 * MiB}


def fetched(hub: LocalHub) -> list[str]:
    return sorted(path for method, path, _ in hub.requests if method == "GET")


async def interrupt_after_small_files(hub: LocalHub, dest: object, **kw: object) -> list[ProgressEvent]:
    """Start an import with the big file trickling in; cancel it once the small files are verified
    and the big file's first chunk was written."""
    hub.faults.slow_bps = 512 * 1024
    events: list[ProgressEvent] = []
    verified: set[str] = set()
    ready = asyncio.Event()

    def on_progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.state is FileState.VERIFIED:
            verified.add(event.path)
        if event.path == "big.bin" and event.state is FileState.RUNNING and event.bytes_done >= MiB:
            verified.add("big.bin:1MiB")
        if verified >= {"config.json", "tok/vocab.json", "big.bin:1MiB"}:
            ready.set()

    task = asyncio.create_task(
        import_artifact(
            kw.pop("source"),  # type: ignore[arg-type]
            dest,  # type: ignore[arg-type]
            registry=fast_registry(),
            on_progress=on_progress,
            keep_partial=True,
            **kw,  # type: ignore[arg-type]
        )
    )
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    hub.faults.slow_bps = 0
    return events


async def test_a_cancelled_import_parks_verified_files_and_the_next_one_finishes(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "dest"
    events = await interrupt_after_small_files(hub, dest, source=f"hf://{repo}")
    assert {e.path for e in events if e.state is FileState.PARKED} == {"config.json", "tok/vocab.json", "big.bin"}
    left = files_under(dest)
    # The verified files stay where they were received (no rename on the way out); the record says they are whole.
    assert sorted(left) == [
        f"{PARTIAL_DIR}/incomplete/big.bin",
        f"{PARTIAL_DIR}/incomplete/config.json",
        f"{PARTIAL_DIR}/incomplete/tok/vocab.json",
        RECORD_PATH,
    ]
    kept = len(left[f"{PARTIAL_DIR}/incomplete/big.bin"])
    assert MiB <= kept < 4 * MiB
    assert not list(dest.rglob(f"*{PART_SUFFIX}")), "nothing half-written outside the partial folder"

    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert [(p, r) for m, p, r in hub.requests if m == "GET"] == [("big.bin", f"bytes={kept}-")]
    assert result.resumed == 2 and {f.path for f in result.files if f.resumed} == {"config.json", "tok/vocab.json"}
    commit = hub.repos[repo].refs["main"]
    expected = {p: f.disk.read_bytes() for p, f in hub.repos[repo].commits[commit].items()}
    after = files_under(dest)
    manifest = json.loads(after.pop(".artifact-import/manifest.json"))
    assert after == expected, "the partial folder is gone and every file is in place"
    assert {f["path"] for f in manifest["files"]} == set(FILES)


async def test_a_verified_file_changed_where_it_was_kept_is_not_taken_on_the_records_word(
    hub: LocalHub, tmp_path: Path
) -> None:
    """The verified files an interruption keeps stay where they were received; the record vouches for them
    only as they were then (size, mtime, inode). Bytes swapped there since, of the same size, are read again
    and refused, never committed as verified."""
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "dest"
    await interrupt_after_small_files(hub, dest, source=f"hf://{repo}")
    kept = dest / PARTIAL_DIR / "incomplete" / "config.json"
    assert kept.read_bytes() == b'{"a": 1}'
    kept.write_bytes(b'{"a": 2}')
    with pytest.raises(IntegrityError, match=r"config\.json"):
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert not (dest / "config.json").exists()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert result.resumed == 0 and (dest / "config.json").read_bytes() == b'{"a": 1}'


async def test_a_corrupted_parked_start_fails_closed_and_the_next_import_starts_over(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "dest"
    await interrupt_after_small_files(hub, dest, source=f"hf://{repo}")
    parked = dest / PARTIAL_DIR / "incomplete" / "big.bin"
    data = bytearray(parked.read_bytes())
    data[10] ^= 0xFF
    parked.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=r"big\.bin"):
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), keep_partial=True)
    assert not dest.exists() or files_under(dest) == {}, "a verification failure keeps nothing"
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert result.resumed == 0 and (dest / "big.bin").stat().st_size == 4 * MiB


async def test_a_source_that_fails_parks_the_verified_files(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, {"config.json": b"{}", "big.bin": 64 * 1024})
    # Retry-After keeps big.bin failing for a while, so config.json is surely verified before it gives up.
    hub.faults.errors["big.bin"] = [(503, "1")] * 10
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError):
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(max_attempts=3), keep_partial=True)
    record = json.loads((dest / RECORD_PATH).read_bytes())
    assert [f["path"] for f in record["files"]] == ["config.json"]
    hub.faults.errors.clear()
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert fetched(hub) == ["big.bin"] and result.resumed == 1


async def test_a_verification_failure_parks_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    hub.faults.flip_byte["big.bin"] = 3 * MiB
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError):
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), keep_partial=True)
    assert not dest.exists()


async def test_a_file_refused_while_others_stream_keeps_nothing_of_them(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    hub.faults.flip_byte["tok/vocab.json"] = 0
    # vocab.json arrives (and is refused) after 1 s, when big.bin has its first MiB written.
    hub.faults.errors["tok/vocab.json"] = [(503, "1")]
    hub.faults.slow_bps = 2 * MiB
    dest = tmp_path / "dest"
    with pytest.raises(IntegrityError, match=r"tok/vocab\.json"):
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), keep_partial=True)
    assert not dest.exists()


async def test_parked_files_of_another_revision_are_discarded(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "dest"
    await interrupt_after_small_files(hub, dest, source=f"hf://{repo}")
    hub.commit(repo, {**FILES, "config.json": b'{"a": 2}'})
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert result.resumed == 0 and len(fetched(hub)) == 3
    assert (dest / "config.json").read_bytes() == b'{"a": 2}'
    assert not (dest / PARTIAL_DIR).exists()


async def test_resuming_into_a_vfolder_keeps_the_quota_usage_right(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    volume = VFSVolume("local", tmp_path / "vol", fsync=False, quotas={"u": 100 * MiB})
    vfid = VFolderID("u", uuid.uuid4())
    await volume.create_vfolder(vfid)
    adapter = VolumeStorageAdapter("vfolder_storage_r", volume, vfid)
    await interrupt_after_small_files(hub, adapter, source=f"hf://{repo}")
    usage = await volume.get_quota("u")
    assert usage.in_flight == 0 and usage.used == await volume.measure_usage("u") > MiB
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", adapter, registry=fast_registry())
    assert result.resumed == 2
    (request,) = [(p, r) for m, p, r in hub.requests if m == "GET"]
    assert request[0] == "big.bin" and str(request[1]).startswith("bytes="), "big.bin went on where it stopped"
    usage = await volume.get_quota("u")
    assert usage.in_flight == 0
    assert usage.used == await volume.measure_usage("u")
    assert sorted(files_under(volume.vfolder_path(vfid))) == sorted([*FILES, ".artifact-import/manifest.json"])


@contextlib.asynccontextmanager
async def interrupted_s3_import(hub: LocalHub, s3: S3Server) -> AsyncIterator[tuple[str, ObjectStorage]]:
    """An import into a bucket, cancelled once its 2 MiB multipart file is verified and the big one streams."""
    repo = repo_name("resume")
    hub.create_repo(repo, {"a.bin": 2 * MiB, "big.bin": 16 * MiB})
    hub.faults.slow_bps = 4 * MiB
    bucket = s3.make_bucket()
    storage = ObjectStorage("objects", s3.endpoint, bucket, "m", multipart_threshold=MiB, part_size=5 * MiB)
    try:
        ready = asyncio.Event()

        def on_progress(event: ProgressEvent) -> None:
            if event.path == "a.bin" and event.state is FileState.VERIFIED:
                ready.set()

        task = asyncio.create_task(
            import_artifact(
                f"hf://{repo}", storage, registry=fast_registry(), on_progress=on_progress, keep_partial=True
            )
        )
        await asyncio.wait_for(ready.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        hub.faults.slow_bps = 0
        yield repo, storage
    finally:
        await storage.aclose()


async def test_object_storage_parks_a_verified_multipart_upload_and_completes_it_next_time(
    hub: LocalHub, s3: S3Server
) -> None:
    async with interrupted_s3_import(hub, s3) as (repo, storage):
        left = sorted(path for path, _, _ in await storage.list_objects())
        ((key, upload_id),) = await storage.incomplete_uploads()
        assert key == "m/a.bin", "a.bin's upload is kept open"
        # Its parking token, the record, and the id recorded when the upload began; no object under its name.
        assert left == sorted([f"{PARTIAL_DIR}/files/a.bin", RECORD_PATH, upload_token_path("a.bin", upload_id)])

        hub.requests.clear()
        result = await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
        assert fetched(hub) == ["big.bin"] and result.resumed == 1
        objects = {path: size for path, size, _ in await storage.list_objects()}
        assert objects == {"a.bin": 2 * MiB, "big.bin": 16 * MiB, ".artifact-import/manifest.json": objects[MANIFEST]}
        assert await storage.incomplete_uploads() == []
        commit = hub.repos[repo].refs["main"]
        resp = s3.endpoint.client(max_connections=1).get_object(storage.bucket, "m/a.bin")
        assert resp.read() == hub.repos[repo].commits[commit]["a.bin"].disk.read_bytes()
        resp.close()
        resp.release_conn()


async def test_parked_uploads_of_another_revision_are_aborted(hub: LocalHub, s3: S3Server) -> None:
    async with interrupted_s3_import(hub, s3) as (repo, storage):
        hub.commit(repo, {"a.bin": 2 * MiB, "big.bin": MiB})
        result = await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
        assert result.resumed == 0
        assert await storage.incomplete_uploads() == [], "the parked upload was aborted, not left to bill"
        assert not [p for p, _, _ in await storage.list_objects() if p.startswith(PARTIAL_DIR)]


async def test_object_storage_does_not_park_small_or_half_received_files(hub: LocalHub, s3: S3Server) -> None:
    repo = repo_name("resume")
    hub.create_repo(repo, FILES)
    bucket = s3.make_bucket()
    storage = ObjectStorage("objects", s3.endpoint, bucket, "m", multipart_threshold=5 * MiB, part_size=5 * MiB)
    try:
        await interrupt_after_small_files(hub, storage, source=f"hf://{repo}")
        assert await storage.list_objects() == []
        assert await storage.incomplete_uploads() == []
    finally:
        await storage.aclose()
