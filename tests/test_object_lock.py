"""One import per destination on object storage: the lock object, its lease, and its take-over.

Against JuiceFS's gateway (which ignores conditional writes) and moto (which
honours them): both must let exactly one holder in.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifact_import import ObjectStorage, StorageError
from artifact_import.storages.lease import LOCK_PATH

from .conftest import repo_name, run_cli, start_import, wait_until
from .hub import LocalHub
from .s3server import S3Server
from .test_crash import FILES, _peek

MiB = 1 << 20


@pytest.fixture(scope="module", params=["juicefs", "moto"])
def server(
    request: pytest.FixtureRequest, s3: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[S3Server]:
    if request.param == "juicefs":
        yield s3
        return
    moto = S3Server.start_moto(tmp_path_factory.mktemp("moto-lock"))
    yield moto
    moto.kill()


def _storage(server: S3Server, bucket: str, *, lease: float = 30.0) -> ObjectStorage:
    return ObjectStorage("objects", server.endpoint, bucket, "m", lock_lease=lease)


def _plant_lock(server: S3Server, bucket: str, **holder: object) -> None:
    body = json.dumps({"token": "someone-else", "lease": 30.0, **holder}).encode()
    server.endpoint.client(max_connections=1)._put_object(bucket, f"m/{LOCK_PATH}", body)


def _a_dead_pid() -> int:
    dead = subprocess.Popen(["true"])
    dead.wait()
    return dead.pid


def _objects(server: S3Server, bucket: str) -> list[str]:
    client = server.endpoint.client(max_connections=1)
    return sorted(str(o.object_name) for o in client.list_objects(bucket, recursive=True))


async def test_only_one_holder_at_a_time_and_the_lock_goes_with_it(server: S3Server) -> None:
    bucket = server.make_bucket()
    first, second = _storage(server, bucket), _storage(server, bucket)
    try:
        async with first.exclusive(wait=0):
            told: list[str] = []
            with pytest.raises(StorageError, match=r"another import into this destination is still running \(on "):
                await second.exclusive(wait=1.5, on_wait=lambda: told.append("waiting")).__aenter__()
            assert told == ["waiting"]
            assert _objects(server, bucket) == [f"m/{LOCK_PATH}"]
        assert _objects(server, bucket) == [], "released: the lock object is gone"
        async with second.exclusive(wait=0):
            pass
    finally:
        await first.aclose()
        await second.aclose()


async def test_racing_for_a_free_lock_lets_exactly_one_in(server: S3Server) -> None:
    bucket = server.make_bucket()
    storages = [_storage(server, bucket) for _ in range(4)]
    inside: list[int] = []
    most = 0

    async def contender(i: int) -> None:
        nonlocal most
        async with storages[i].exclusive():
            inside.append(i)
            most = max(most, len(inside))
            await asyncio.sleep(0.3)
            inside.remove(i)

    try:
        await asyncio.wait_for(asyncio.gather(*(contender(i) for i in range(4))), 90)
    finally:
        for storage in storages:
            await storage.aclose()
    assert most == 1, "two holders at once"


async def test_a_lock_of_a_process_that_is_gone_is_taken_over_at_once(server: S3Server) -> None:
    bucket = server.make_bucket()
    _plant_lock(server, bucket, host=socket.gethostname(), pid=_a_dead_pid(), expires=time.time() + 30)
    storage = _storage(server, bucket)
    try:
        started = time.monotonic()
        async with storage.exclusive(wait=5):
            assert time.monotonic() - started < 4
    finally:
        await storage.aclose()


async def test_a_lock_from_another_host_is_taken_over_once_its_lease_runs_out(server: S3Server) -> None:
    bucket = server.make_bucket()
    # Expired a whole lease ago by its own clock: taken at once.
    _plant_lock(server, bucket, host="elsewhere", pid=1, expires=time.time() - 61)
    storage = _storage(server, bucket, lease=2.0)
    try:
        async with storage.exclusive(wait=5):
            pass
        # Fresh by its clock, but never renewed while we watch: taken after one lease (ours: 2 s).
        _plant_lock(server, bucket, host="elsewhere", pid=1, expires=time.time() + 3600)
        started = time.monotonic()
        async with storage.exclusive(wait=10):
            assert time.monotonic() - started >= 2.0
    finally:
        await storage.aclose()


async def test_a_renewed_lock_is_not_taken_over(server: S3Server) -> None:
    bucket = server.make_bucket()
    holder, waiter = _storage(server, bucket, lease=1.5), _storage(server, bucket, lease=1.5)
    try:
        async with holder.exclusive(wait=0):
            with pytest.raises(StorageError, match="still running"):
                # Three leases of waiting: the holder renews, so the lock stays alive.
                await waiter.exclusive(wait=4.5).__aenter__()
    finally:
        await holder.aclose()
        await waiter.aclose()


async def test_a_holder_whose_lock_was_taken_stops_without_committing(server: S3Server) -> None:
    bucket = server.make_bucket()
    storage = _storage(server, bucket, lease=1.5)
    try:
        with pytest.raises(StorageError, match="another process took over this import's lock"):
            async with storage.exclusive(wait=0):
                _plant_lock(server, bucket, host="elsewhere", pid=1, expires=time.time() + 60)
                await asyncio.sleep(10)
    finally:
        await storage.aclose()


def test_a_second_import_into_the_same_bucket_prefix_waits_then_finds_it_done(
    hub: LocalHub, s3: S3Server, tmp_path: Path
) -> None:
    repo = repo_name("s3lock")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 2 * MiB
    bucket = s3.make_bucket()
    dest = f"s3://{bucket}/m"
    first = start_import(repo, dest, env=s3.env())
    wait_until(lambda: f"m/{LOCK_PATH}" in _objects(s3, bucket), first, "the first import's lock")
    bounded = run_cli("import", f"hf://{repo}", "--to", dest, "--lock-timeout", "0", env=s3.env())
    assert bounded.returncode == 1 and "another import into this destination is still running" in bounded.stderr
    second = start_import(repo, dest, "--json", env=s3.env())
    wait_until(lambda: "waiting for the import in progress" in _peek(second), second, "the waiting line")
    assert first.wait(timeout=120) == 0
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out)["skipped_count"] == len(FILES), "the second found everything imported, and fetched nothing"
    assert run_cli("verify", dest, env=s3.env()).returncode == 0
    assert f"m/{LOCK_PATH}" not in _objects(s3, bucket)
