"""Object storage against a real S3 server that fails, damages, refuses and lists as real servers do.

The server is the session's (JuiceFS's gateway by default: MinIO's S3 front
end, which checks signatures, payload hashes and Content-MD5); faults come
from an HTTP proxy in front of it (``s3proxy``), never from a mock.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from artifact_import import ObjectStorage, S3Credentials, S3Endpoint, StorageError, import_artifact
from artifact_import.storages.object import MiB

from .conftest import ROOT, fast_registry, repo_name
from .hub import LocalHub
from .s3proxy import FaultyS3Proxy
from .s3server import S3Server


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[FaultyS3Proxy]:
    faulty = FaultyS3Proxy(s3.endpoint.url)
    faulty.start()
    yield faulty
    faulty.stop()


def _through(proxy: FaultyS3Proxy, s3: S3Server, bucket: str) -> ObjectStorage:
    endpoint = S3Endpoint(proxy.url, s3.endpoint.credentials, s3.endpoint.region)
    return ObjectStorage("objects", endpoint, bucket, "m", multipart_threshold=5 * MiB, part_size=5 * MiB)


def _objects(s3: S3Server, bucket: str) -> list[str]:
    return [str(o.object_name) for o in s3.endpoint.client(max_connections=1).list_objects(bucket, recursive=True)]


def _incomplete(s3: S3Server, bucket: str) -> list[str]:
    client = s3.endpoint.client(max_connections=1)
    return [str(u.object_name) for u in client._list_multipart_uploads(bucket).uploads]


async def _fails_and_leaves_nothing(
    hub: LocalHub, s3: S3Server, proxy: FaultyS3Proxy, files: dict[str, bytes | int], error: str
) -> None:
    """Import ``files`` through the proxy: the import must fail with ``error`` and the bucket stay empty."""
    repo = repo_name("s3fault")
    hub.create_repo(repo, files)
    bucket = s3.make_bucket()
    storage = _through(proxy, s3, bucket)
    with pytest.raises(StorageError, match=error):
        await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
    await storage.aclose()
    assert _objects(s3, bucket) == [], "no object, not even one missing a part"
    assert _incomplete(s3, bucket) == [], "the upload was aborted"


async def test_a_part_the_server_refuses_fails_the_import_and_nothing_is_completed(
    hub: LocalHub, s3: S3Server, proxy: FaultyS3Proxy
) -> None:
    proxy.refuse.add(5)
    files: dict[str, bytes | int] = {"config.json": b"{}", "big.safetensors": 40 * MiB + 3}
    await _fails_and_leaves_nothing(hub, s3, proxy, files, r"big\.safetensors \(part 5\)")
    assert any("partNumber=5" in q for _, _, q in proxy.seen), "part 5 was sent and refused"


def test_the_cli_exits_1_naming_the_part_when_one_is_refused(
    hub: LocalHub, s3: S3Server, proxy: FaultyS3Proxy, tmp_path: Path
) -> None:
    repo = repo_name("s3fault")
    hub.create_repo(repo, {"big.safetensors": 24 * MiB})
    bucket = s3.make_bucket()
    proxy.refuse.add(2)
    env = {**s3.env(), "AWS_ENDPOINT_URL": proxy.url}
    proc = subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", "import", f"hf://{repo}", "--to", f"s3://{bucket}/m"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **env}, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "big.safetensors (part 2)" in proc.stderr and "every file matched" not in proc.stderr
    assert "Task exception was never retrieved" not in proc.stderr
    assert _objects(s3, bucket) == [] and _incomplete(s3, bucket) == []


async def test_a_part_damaged_in_flight_is_refused_by_the_servers_checksum(
    hub: LocalHub, s3: S3Server, proxy: FaultyS3Proxy
) -> None:
    # Over plain http: the signed payload sha256 and the Content-MD5 of every part are what servers check.
    proxy.corrupt.add(3)
    error = r"part 3\).*(SHA256|Digest|checksum|Sha256|MD5)"
    await _fails_and_leaves_nothing(hub, s3, proxy, {"big.safetensors": 20 * MiB + 1}, error)


async def test_bad_credentials_are_refused_by_the_server(s3: S3Server) -> None:
    bucket = s3.make_bucket()
    wrong = S3Endpoint(s3.endpoint.url, S3Credentials("not-a-key", "not-the-secret-0123456789"), s3.endpoint.region)
    storage = ObjectStorage("objects", wrong, bucket)
    with pytest.raises(StorageError, match="refused the request") as info:
        await storage.preflight()
    await storage.aclose()
    assert "not-the-secret" not in str(info.value)


async def test_a_key_below_an_object_of_the_same_name_gets_a_clear_error(s3: S3Server) -> None:
    bucket = s3.make_bucket()
    client = s3.endpoint.client(max_connections=1)
    client.put_object(bucket, "models/m", io.BytesIO(b"an object, not a folder"), 23)
    storage = ObjectStorage("objects", s3.endpoint, bucket, "models/m")
    pending = await storage.open_write("config.json", size_hint=2)
    await pending.write(b"{}")
    try:
        await pending.commit()
    except StorageError as exc:
        # MinIO and JuiceFS keep objects as files: a key cannot be both. Say so, not "HTTP 500".
        assert "'models/m' is an object in bucket" in str(exc) and "cannot hold an object and a folder" in str(exc)
    else:
        # AWS S3 and SeaweedFS hold both: then the write simply lands.
        assert s3.kind in ("seaweedfs", "moto", "external"), f"{s3.kind} was expected to refuse the key"
        assert client.stat_object(bucket, "models/m/config.json").size == 2
    finally:
        await storage.aclose()


async def test_incomplete_uploads_are_found_by_filtering_and_paged_to_the_end(s3: S3Server) -> None:
    bucket = s3.make_bucket()
    client = s3.endpoint.client(max_connections=1)
    mine = sorted(
        (f"m/file-{i}", client._create_multipart_upload(bucket, f"m/file-{i}", {"Content-Type": "x/y"}))
        for i in range(5)
    )
    client._create_multipart_upload(bucket, "other/file", {"Content-Type": "x/y"})
    client._create_multipart_upload(bucket, "mm/file", {"Content-Type": "x/y"})  # "m" as a prefix of a name
    first_page = client._list_multipart_uploads(bucket, max_uploads=2).uploads
    if [u.object_name for u in first_page] != sorted(u.object_name for u in first_page):
        pytest.skip(f"{s3.kind} does not list multipart uploads in key order, so no client can page them")
    storage = ObjectStorage("objects", s3.endpoint, bucket, "m")
    storage.upload_listing_page = 2
    assert sorted(await storage.incomplete_uploads()) == mine
    await storage.aclose()


def test_a_multipart_object_of_hundreds_of_mb_lands_whole_in_bounded_memory(
    hub: LocalHub, s3: S3Server, tmp_path: Path
) -> None:
    repo = repo_name("s3big")
    hub.create_repo(repo, {"model.safetensors": 300 * MiB + 7})
    bucket = s3.make_bucket()
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", "-q", "import", f"hf://{repo}", "--to", f"s3://{bucket}/m"],
        env={**os.environ, **s3.env()}, cwd=ROOT, stderr=subprocess.PIPE,
    )  # fmt: skip
    peak_kib = 0
    # VmHWM is the peak RSS since exec (wait4's ru_maxrss would also count the test process's pages the child
    # held before exec); it only grows, so the last reading before the exit is the peak up to then.
    while proc.poll() is None:
        peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
        time.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    peak_mib = peak_kib / 1024
    assert 0 < peak_mib < 200, f"peak RSS {peak_mib:.0f} MiB for a 300 MiB file: parts are held, not the file"
    expected = hub.repos[repo].commits[hub.repos[repo].refs["main"]]["model.safetensors"]
    client = s3.endpoint.client(max_connections=1)
    stat = client.stat_object(bucket, "m/model.safetensors")
    assert stat.size == expected.size and "-" in (stat.etag or ""), "a completed multipart upload"
    digest = hashlib.sha256()
    resp = client.get_object(bucket, "m/model.safetensors")
    for block in resp.stream(1 << 20):
        digest.update(block)
    resp.close()
    resp.release_conn()
    assert digest.hexdigest() == expected.sha256


def _vm_hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0  # gone meanwhile
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
