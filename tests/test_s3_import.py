"""Imports into, out of and between S3 buckets, against a real S3-protocol server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest

from artifact_import import (
    MANIFEST_PATH,
    ObjectStorage,
    StorageError,
    import_artifact,
)
from artifact_import.storages.lease import LOCK_PATH
from artifact_import.storages.object import MiB

from .conftest import fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub
from .s3server import S3Server

FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
    "model.safetensors": 3 * MiB + 17,
    "weights/shard-1.bin": 12 * MiB + 5,
}


def _expected(hub: LocalHub, repo: str) -> dict[str, bytes]:
    commit = hub.repos[repo].refs["main"]
    return {path: f.disk.read_bytes() for path, f in hub.repos[repo].commits[commit].items()}


def _objects(s3: S3Server, bucket: str, prefix: str = "") -> dict[str, bytes]:
    client = s3.endpoint.client(max_connections=1)
    found = {}
    for obj in client.list_objects(bucket, prefix=prefix or None, recursive=True):
        resp = client.get_object(bucket, obj.object_name)
        found[str(obj.object_name)[len(prefix) :]] = resp.read()
        resp.close()
        resp.release_conn()
    return found


def _incomplete(s3: S3Server, bucket: str) -> list[str]:
    client = s3.endpoint.client(max_connections=1)
    return [u.object_name for u in client._list_multipart_uploads(bucket).uploads]


def _small_parts(s3: S3Server, bucket: str, prefix: str = "") -> ObjectStorage:
    return ObjectStorage("objects", s3.endpoint, bucket, prefix, multipart_threshold=5 * MiB, part_size=5 * MiB)


async def test_hf_to_s3_lands_every_file_verified_with_sha256_metadata(hub: LocalHub, s3: S3Server) -> None:
    repo = repo_name("s3")
    commit = hub.create_repo(repo, FILES)
    bucket = s3.make_bucket()
    storage = _small_parts(s3, bucket, "hub/model")
    result = await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
    await storage.aclose()
    objects = _objects(s3, bucket, "hub/model/")
    manifest = json.loads(objects.pop(MANIFEST_PATH))
    assert objects == _expected(hub, repo)
    assert manifest["commit"] == commit == result.commit
    client = s3.endpoint.client(max_connections=1)
    stat = client.stat_object(bucket, "hub/model/weights/shard-1.bin")
    assert stat.etag.endswith("-3"), "12 MiB in 5 MiB parts: a multipart upload"
    assert stat.metadata["x-amz-meta-sha256"] == hashlib.sha256(objects["weights/shard-1.bin"]).hexdigest()
    assert _incomplete(s3, bucket) == []


async def test_corrupted_source_byte_leaves_nothing_in_the_bucket(hub: LocalHub, s3: S3Server) -> None:
    repo = repo_name("s3")
    hub.create_repo(repo, FILES)
    hub.faults.flip_byte["weights/shard-1.bin"] = 11 * MiB
    bucket = s3.make_bucket()
    storage = _small_parts(s3, bucket)
    with pytest.raises(StorageError.__mro__[1]) as info:  # ArtifactImportError: an IntegrityError
        await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
    await storage.aclose()
    assert type(info.value).__name__ == "IntegrityError" and info.value.path == "weights/shard-1.bin"
    assert _objects(s3, bucket) == {}
    assert _incomplete(s3, bucket) == []


async def test_server_killed_mid_upload_fails_naming_the_file(
    hub: LocalHub, own_s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    repo = repo_name("s3")
    hub.create_repo(repo, {"model.bin": 40 * MiB})
    hub.faults.slow_bps = 16 * MiB
    bucket = own_s3.make_bucket()
    storage = _small_parts(own_s3, bucket)

    async def kill_when_uploading() -> None:
        while not any(r[1] == "model.bin" for r in hub.requests):  # noqa: ASYNC110 - the hub is another thread
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # some parts are up by now
        await asyncio.to_thread(own_s3.kill)

    killer = asyncio.create_task(kill_when_uploading())
    with pytest.raises(StorageError) as info:
        await asyncio.wait_for(import_artifact(f"hf://{repo}", storage, registry=fast_registry(connections=1)), 120)
    await killer
    await storage.aclose()
    assert info.value.path is not None and info.value.path.startswith("model.bin")
    assert "cannot reach" in str(info.value) and own_s3.endpoint.url in str(info.value)
    creds = own_s3.endpoint.credentials
    assert creds is not None and creds.secret_key not in str(info.value)
    # The server is gone, so the partial upload could not be aborted: that is reported, not hidden.
    assert "could not abort the incomplete multipart upload" in caplog.text
    assert creds.secret_key not in caplog.text


def test_cli_hf_to_s3_uri_and_back_to_a_directory(hub: LocalHub, s3: S3Server, tmp_path: Path) -> None:
    repo = repo_name("s3")
    hub.create_repo(repo, FILES)
    bucket = s3.make_bucket()
    up = run_cli("import", f"hf://{repo}", "--to", f"s3://{bucket}/models/{repo}", "--json", env=s3.env())
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["file_count"] == len(FILES)
    down = run_cli("import", f"s3://{bucket}/models/{repo}", "--to", str(tmp_path / "copy"), "--json", env=s3.env())
    assert down.returncode == 0, down.stderr
    result = json.loads(down.stdout)
    on_disk = files_under(tmp_path / "copy")
    on_disk.pop(MANIFEST_PATH)
    assert on_disk == _expected(hub, repo), "our own manifest in the bucket is not re-imported as a file"
    details = {f["path"]: f["verdicts"][0]["detail"] for f in result["files"]}
    assert details["config.json"] == "md5 matches"  # single-part ETag = MD5, verified
    assert set(details) == set(FILES)


def test_cli_s3_to_s3_through_a_config_file(s3: S3Server, tmp_path: Path) -> None:
    src_bucket, dst_bucket = s3.make_bucket("src"), s3.make_bucket("dst")
    client = s3.endpoint.client(max_connections=1)
    payload = {f"data/part-{i}.bin": os.urandom(1000 + i) for i in range(5)}
    for key, data in payload.items():
        client.put_object(src_bucket, f"datasets/x/{key}", __import__("io").BytesIO(data), len(data))
    creds = s3.endpoint.credentials
    assert creds is not None
    config = tmp_path / "storage.toml"
    config.write_text(
        f"""
[storage.src]
backend = "minio"
endpoint = "{s3.endpoint.url}"
bucket = "{src_bucket}"
prefix = "datasets"
[storage.src.options]
access-key = "{creds.access_key}"
secret-key = "{creds.secret_key}"

[storage.dst]
backend = "s3"
endpoint = "{s3.endpoint.url}"
bucket = "{dst_bucket}"
prefix = "imported"
[storage.dst.options]
minio-access-key = "{creds.access_key}"
minio-secret-key = "{creds.secret_key}"
"""
    )
    proc = run_cli("--config", str(config), "import", "storage:src/x", "--to", "storage:dst/x-copy", "--json")
    assert proc.returncode == 0, proc.stderr
    copied = _objects(s3, dst_bucket, "imported/x-copy/")
    copied.pop(MANIFEST_PATH)
    assert copied == payload


def test_cli_read_only_storage_is_refused_before_any_download(hub: LocalHub, s3: S3Server, tmp_path: Path) -> None:
    repo = repo_name("s3")
    hub.create_repo(repo, FILES)
    config = tmp_path / "ro.toml"
    config.write_text(
        f'[storage.archive]\nbackend = "minio"\nendpoint = "{s3.endpoint.url}"\n'
        f'bucket = "{s3.make_bucket()}"\nread-only = true\n'
    )
    proc = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", "storage:archive", env=s3.env())
    assert proc.returncode == 1
    assert "read-only" in proc.stderr and "Traceback" not in proc.stderr
    assert hub.requests == []


def test_cli_bad_credentials_fail_clearly_and_never_print_the_secret(
    hub: LocalHub, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    strict = S3Server.start_moto(tmp_path_factory.mktemp("moto-auth"), auth=True)
    try:
        repo = repo_name("s3")
        hub.create_repo(repo, FILES)
        secret = "Sup3rSecretValueThatMustNotLeak"
        env = {**strict.env(), "AWS_ACCESS_KEY_ID": "AKIAUNKNOWNKEY", "AWS_SECRET_ACCESS_KEY": secret}
        for before, after in (([], []), ([], ["--json"]), (["-vv"], [])):
            proc = run_cli(*before, "import", f"hf://{repo}", "--to", "s3://models-bucket/x", *after, env=env)
            assert proc.returncode == 1, proc.stderr
            assert "refused the request (AccessDenied)" in proc.stderr
            assert "AWS_SECRET_ACCESS_KEY" in proc.stderr, "the message says what to check"
            assert secret not in proc.stdout + proc.stderr, "not even in -vv debug output"
            if not before:
                assert "Traceback" not in proc.stderr
        assert hub.requests == [], "refused before any download"
    finally:
        strict.kill()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '[storage.m]\nbackend = "minio"\nbucket = "abc"\nendpiont = "http://x"\n',
            ":4: storage.m.endpiont: unknown key",
        ),
        ('[storage.m]\nbackend = "ftp"\n', ":2: storage.m.backend: unknown backend"),
        ('[storage.m]\nbackend = "vfs"\n', ":1: storage.m: missing path"),
        (
            '[storage.m]\nbackend = "minio"\nendpoint = "http://x:9000"\nbucket = "abc"\n'
            '[storage.m.options]\naccess-key = "k"\n',
            ":5: storage.m.options: give both access-key and secret-key",
        ),
        (
            '[storage.m]\nbackend = "vfs"\npath = "/x"\nread-only = "yes"\n',
            ":4: storage.m.read-only: must be true or false",
        ),
        ("[storage.m\n", "not valid TOML"),
    ],
)
def test_malformed_config_names_the_key_and_line(tmp_path: Path, text: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    proc = run_cli(
        "--config", str(config), "import", "hf://org/name", "--to", "storage:m", env={"AWS_ENDPOINT_URL": ""}
    )
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and str(config) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_storage_destination_needs_a_config(tmp_path: Path) -> None:
    proc = run_cli("import", "hf://org/name", "--to", "storage:models")
    assert proc.returncode == 2 and "give --config FILE" in proc.stderr


async def test_logging_of_a_failed_import_never_shows_the_secret(
    hub: LocalHub, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    repo = repo_name("s3")
    hub.create_repo(repo, FILES)
    storage = ObjectStorage("objects", s3.endpoint, "no-such-bucket-at-all")
    with pytest.raises(StorageError, match="does not exist"):
        await import_artifact(f"hf://{repo}", storage, registry=fast_registry())
    await storage.aclose()
    creds = s3.endpoint.credentials
    assert creds is not None and creds.secret_key not in caplog.text
    assert hub.requests == []


async def test_an_upload_cut_off_mid_way_is_aborted_once_the_server_is_back(
    hub: LocalHub, s3: S3Server, caplog: pytest.LogCaptureFixture
) -> None:
    from urllib.parse import urlsplit

    from artifact_import import S3Endpoint

    from .tcpproxy import TcpProxy

    target = urlsplit(s3.endpoint.url)
    assert target.hostname is not None and target.port is not None
    proxy = TcpProxy(target.hostname, target.port)
    endpoint = S3Endpoint(proxy.start(), s3.endpoint.credentials, s3.endpoint.region)
    repo = repo_name("s3")
    hub.create_repo(repo, {"model.bin": 40 * MiB})
    hub.faults.slow_bps = 16 * MiB
    bucket = s3.make_bucket()
    storage = ObjectStorage("objects", endpoint, bucket, multipart_threshold=5 * MiB, part_size=5 * MiB)

    async def cut_when_uploading() -> None:
        while not any(r[1] == "model.bin" for r in hub.requests):  # noqa: ASYNC110 - the hub is another thread
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)
        await asyncio.to_thread(proxy.cut)

    cutter = asyncio.create_task(cut_when_uploading())
    try:
        with pytest.raises(StorageError, match=r"model\.bin.*cannot reach"):
            await asyncio.wait_for(import_artifact(f"hf://{repo}", storage, registry=fast_registry(connections=1)), 120)
        await cutter
        assert "could not abort the incomplete multipart upload" in caplog.text
        assert _incomplete(s3, bucket) == ["model.bin"], "the server still holds the parts"
        left = _objects(s3, bucket)
        assert [p for p in left if not p.startswith(".artifact-import/")] == [], "but no object is visible"
        # Only the record of that upload's id, for the next import to abort it should this storage not, and
        # the lock its holder could not remove (taken over by the next import: its holder is gone).
        assert [p for p in left if p != LOCK_PATH and p.split("/")[2] != "uploads"] == []
        proxy.restore()
        await storage.preflight()  # the storage's next use, e.g. the next import
        assert _incomplete(s3, bucket) == []
        assert storage.unaborted == set()
    finally:
        await storage.aclose()
        proxy.stop()


async def test_a_bucket_as_staging_for_a_directory_archive(hub: LocalHub, s3: S3Server, tmp_path: Path) -> None:
    from artifact_import import (
        ArtifactStorageImportStep,
        ImportPipeline,
        ImportStepContext,
        ModelTarget,
        StoragePool,
        StorageTarget,
        VFSStorage,
    )

    repo = repo_name("s3")
    hub.create_repo(repo, FILES)
    bucket = s3.make_bucket("staging")
    staging = _small_parts(s3, bucket, "scratch")
    registry = fast_registry()
    context = ImportStepContext(
        model=ModelTarget(repo),
        registry_name=registry.name,
        storage_pool=StoragePool({"staging": staging, "archive": VFSStorage("archive", tmp_path / "archive")}),
        storage_step_mappings={
            ArtifactStorageImportStep.DOWNLOAD: StorageTarget("staging"),
            ArtifactStorageImportStep.VERIFY: StorageTarget("staging"),
            ArtifactStorageImportStep.ARCHIVE: StorageTarget("archive"),
        },
    )
    await ImportPipeline({registry.name: registry}).run(context)
    await staging.aclose()
    archived = files_under(tmp_path / "archive")
    archived.pop(MANIFEST_PATH)
    assert archived == _expected(hub, repo)
    assert _objects(s3, bucket) == {}, "staged objects are removed after the archive commits"
    assert _incomplete(s3, bucket) == []
