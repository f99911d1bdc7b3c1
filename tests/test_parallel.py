"""Large files over many connections: ranges fetched side by side, verified as one in-order stream."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from artifact_import import (
    ArtifactImportError,
    HuggingFaceRegistry,
    IntegrityError,
    ObjectStorage,
    RetryPolicy,
    VerificationError,
    VFSStorage,
    import_artifact,
)
from artifact_import.registries.http import HttpTimeouts
from artifact_import.registries.ranges import ConnectionBudget, ParallelPolicy, fetch
from artifact_import.registries.s3 import S3Registry

from .conftest import files_under, repo_name
from .hub import LocalHub
from .s3server import S3Server

MiB = 1 << 20
#: Small ranges, so that a few MiB make many of them.
POLICY = ParallelPolicy(connections=6, range_size=256 * 1024, min_size=MiB)


def _registry(policy: ParallelPolicy = POLICY) -> HuggingFaceRegistry:
    return HuggingFaceRegistry(
        retry=RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05),
        timeouts=HttpTimeouts(read=5.0),
        parallel=policy,
    )


def _gets(hub: LocalHub, path: str) -> list[str | None]:
    return [r for m, p, r in hub.requests if m == "GET" and p == path]


async def _import(hub: LocalHub, repo: str, dest: Path, policy: ParallelPolicy = POLICY) -> None:
    registry = _registry(policy)
    try:
        await import_artifact(f"hf://{repo}", VFSStorage("dest", dest), registry=registry)
    finally:
        await registry.aclose()


async def test_a_large_file_arrives_over_many_ranges_and_is_identical(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.safetensors": 5 * MiB + 12345, "config.json": b"{}"})
    hub.faults.slow_bps = 4 * MiB  # per connection: the ranges must overlap to finish in time
    await _import(hub, repo, tmp_path / "m")
    on_disk = files_under(tmp_path / "m")
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.safetensors"].disk.read_bytes()
    assert on_disk["model.safetensors"] == expected
    ranges = _gets(hub, "model.safetensors")
    assert len(ranges) == 21, "5 MiB + change in ranges of 256 KiB"
    assert all(r is not None and r.startswith("bytes=") and not r.endswith("-") for r in ranges)
    assert _gets(hub, "config.json") == [None], "a small file: one plain GET"


async def test_a_server_that_ignores_range_still_gets_the_file_right(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 3 * MiB})
    hub.faults.ignore_range = True
    await _import(hub, repo, tmp_path / "m")
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.bin"].disk.read_bytes()
    assert (tmp_path / "m" / "model.bin").read_bytes() == expected


async def test_dropped_ranges_are_resumed_within_their_range(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 3 * MiB})
    hub.faults.drop_after["model.bin"] = [100_000, 50_000, 200_000]
    await _import(hub, repo, tmp_path / "m")
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.bin"].disk.read_bytes()
    assert (tmp_path / "m" / "model.bin").read_bytes() == expected
    assert len(_gets(hub, "model.bin")) == 12 + 3, "each drop cost one more request, not a restart"


async def test_a_file_that_changes_mid_download_fails_and_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 3 * MiB})
    hub.faults.etag_changes_at["model.bin"] = 4
    with pytest.raises(IntegrityError, match="changed at the source"):
        await _import(hub, repo, tmp_path / "m")
    assert not (tmp_path / "m" / "model.bin").exists()


async def test_a_corrupt_range_fails_the_checksum_of_the_whole_stream(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 3 * MiB})
    hub.faults.flip_byte["model.bin"] = 2 * MiB + 7  # in the ninth range
    with pytest.raises(VerificationError, match=r"model\.bin"):
        await _import(hub, repo, tmp_path / "m")
    assert not (tmp_path / "m" / "model.bin").exists()


async def test_the_token_never_reaches_the_cdn_the_ranges_go_to(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 2 * MiB}, token="hf_secret_token_1234")
    registry = HuggingFaceRegistry(token="hf_secret_token_1234", parallel=POLICY)
    try:
        # The CDN answers 400 to a request carrying Authorization: the import would fail.
        await import_artifact(f"hf://{repo}", VFSStorage("dest", tmp_path / "m"), registry=registry)
    finally:
        await registry.aclose()
    assert len(_gets(hub, "model.bin")) == 8


async def test_from_an_s3_source_in_ranges(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.make_bucket()
    data = random.randbytes(3 * MiB + 99)
    client = s3.endpoint.client(max_connections=1)
    client.put_object(bucket, "models/m/weights.bin", io.BytesIO(data), len(data))
    registry = S3Registry(endpoint=s3.endpoint, parallel=POLICY)
    try:
        await import_artifact(f"s3://{bucket}/models/m", VFSStorage("dest", tmp_path / "m"), registry=registry)
    finally:
        await registry.aclose()
    assert hashlib.sha256((tmp_path / "m" / "weights.bin").read_bytes()).digest() == hashlib.sha256(data).digest()


async def test_into_s3_from_many_ranges(hub: LocalHub, s3: S3Server) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 12 * MiB})
    bucket = s3.make_bucket()
    storage = ObjectStorage("objects", s3.endpoint, bucket, "m", part_size=5 * MiB, multipart_threshold=5 * MiB)
    registry = _registry()
    try:
        await import_artifact(f"hf://{repo}", storage, registry=registry)
    finally:
        await registry.aclose()
        await storage.aclose()
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.bin"].disk.read_bytes()
    assert s3.endpoint.client(max_connections=1).get_object(bucket, "m/model.bin").read() == expected


# --- the in-order delivery itself, with ranges that finish in any order ------------------------------------


async def _scrambled(data: bytes, seed: int, live: list[int], peak: list[int]) -> AsyncIterator[bytes]:
    """A source whose ranges take random times; ``live`` counts the bytes held between fetch and delivery."""
    rng = random.Random(seed)

    def open_range(start: int, end: int | None) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            stop = len(data) if end is None else end
            for at in range(start, stop, 4096):
                await asyncio.sleep(rng.random() * 0.002)
                piece = data[at : min(at + 4096, stop)]
                live[0] += len(piece)
                peak[0] = max(peak[0], live[0])
                yield piece

        return chunks()

    policy = ParallelPolicy(connections=4, range_size=64 * 1024, min_size=128 * 1024)
    async for chunk in fetch(open_range, len(data), 0, ConnectionBudget(policy), name="x"):
        live[0] -= len(chunk)
        yield chunk


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_ranges_finishing_in_any_order_are_delivered_in_order_within_the_ticket_bound(seed: int) -> None:
    data = random.Random(seed).randbytes(2 * MiB + 5)
    live, peak = [0], [0]
    received = b"".join([c async for c in _scrambled(data, seed, live, peak)])
    assert received == data
    # Tickets: connections + 2 = 6 ranges of 64 KiB held at most.
    assert peak[0] <= 6 * 64 * 1024


async def test_a_failed_range_fails_the_stream_in_its_place_and_gives_back_its_tickets() -> None:
    data = bytes(1 * MiB)
    policy = ParallelPolicy(connections=2, range_size=64 * 1024, min_size=64 * 1024)
    budget = ConnectionBudget(policy)

    def open_range(start: int, end: int | None) -> AsyncIterator[bytes]:
        async def chunks() -> AsyncIterator[bytes]:
            if start == 5 * 64 * 1024:
                raise ArtifactImportError("range 5 failed")
            yield data[start:end]

        return chunks()

    received = 0
    with pytest.raises(ArtifactImportError, match="range 5 failed"):
        async for chunk in fetch(open_range, len(data), 0, budget, name="x"):
            received += len(chunk)
    assert received == 5 * 64 * 1024, "every byte before the failed range, none after"
    # Every ticket and connection came back: a new file can use the whole budget.
    assert b"".join([c async for c in fetch(open_range, 5 * 64 * 1024, 0, budget, name="y")]) == data[: 5 * 64 * 1024]
    assert budget.tickets._value == policy.tickets == 4 and budget.connections.in_use == 0


async def test_an_interrupted_parallel_download_resumes_after_the_bytes_handed_on(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.bin": 3 * MiB})
    # From the ninth request on, every answer is cut before its first byte: the source "went away".
    hub.faults.drop_after["model.bin"] = [None] * 8 + [0] * 40
    registry = HuggingFaceRegistry(retry=RetryPolicy(max_attempts=2, backoff_base=0.01), parallel=POLICY)
    storage = VFSStorage("dest", tmp_path / "m")
    try:
        with pytest.raises(ArtifactImportError, match="download failed"):
            await import_artifact(f"hf://{repo}", storage, registry=registry, keep_partial=True)
    finally:
        await registry.aclose()
    journal = tmp_path / "m" / ".artifact-import" / "partial" / "incomplete" / "model.bin"
    kept = journal.stat().st_size
    assert kept >= MiB and kept % (256 * 1024) == 0, "whole ranges, in order, up to the one that failed"
    hub.faults.drop_after.clear()
    hub.requests.clear()
    await _import(hub, repo, tmp_path / "m")
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.bin"].disk.read_bytes()
    assert (tmp_path / "m" / "model.bin").read_bytes() == expected
    starts = sorted(int(str(r).split("=")[1].split("-")[0]) for r in _gets(hub, "model.bin"))
    assert starts[0] == kept, "nothing before what was kept is fetched again"


async def test_an_expired_cdn_url_is_signed_again_and_the_ranges_go_on(hub: LocalHub, tmp_path: Path) -> None:
    """The Hub's CDN URLs expire (an hour); an import that takes longer than the URL lives asks the hub for a
    fresh one instead of failing "access denied" half way, and what was received is not fetched again."""
    repo = repo_name("par")
    hub.create_repo(repo, {"model.safetensors": 4 * MiB})
    hub.redirects = 0
    hub.faults.slow_bps = MiB  # 16 ranges of 256 KiB over 6 connections: ~0.75 s
    hub.faults.cdn_url_lifetime = 0.3
    await _import(hub, repo, tmp_path / "m")
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.safetensors"].disk.read_bytes()
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == expected
    assert hub.redirects >= 2, "the expired URL was replaced"
    # A range is never asked again from its start: every request continues where its range had got to.
    starts = [int(r.removeprefix("bytes=").split("-")[0]) for r in _gets(hub, "model.safetensors") if r]
    assert len(starts) == len(set(starts))


async def test_a_cdn_that_refuses_every_signed_url_fails_the_import_with_access_denied(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("par")
    hub.create_repo(repo, {"model.safetensors": 2 * MiB})
    hub.faults.cdn_url_lifetime = -1.0  # expired when issued
    with pytest.raises(ArtifactImportError, match="access denied"):
        await _import(hub, repo, tmp_path / "m")
    assert not (tmp_path / "m" / "model.safetensors").exists()
    assert hub.redirects <= 1 + 3 * POLICY.connections, "a bounded number of fresh URLs, then a clear failure"
