"""Imports into users' vfolders: VFS and object volumes, quotas, escapes, read-only, background tasks.

Every test runs against both volume kinds: a directory tree on disk, and a
bucket on the test S3 server (moto, or MinIO when configured).
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from artifact_import import (
    MANIFEST_PATH,
    AbstractVolume,
    ConfigError,
    ImportService,
    IntegrityError,
    ModelTarget,
    ObjectVolume,
    QuotaExceededError,
    ReadOnlyStorageError,
    RepositoryNotFoundError,
    TaskState,
    UnsafePathError,
    VFolderID,
    VFolderNotFoundError,
    VFolderRef,
    VFSVolume,
    VolumePool,
    VolumeStorageAdapter,
)
from artifact_import.storages.object import MiB

from .conftest import fast_registry, in_flight_files, repo_name, run_cli
from .hub import LocalHub
from .s3server import S3Server

FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
    "model.safetensors": 3 * MiB + 17,
    "weights/shard-1.bin": 6 * MiB + 5,
}
TOTAL = sum(len(v) if isinstance(v, bytes) else v for v in FILES.values())
#: A Backend.AI quota scope (its ``QuotaScopeID``), whose folder on a volume is the UUID's hex.
SCOPE_UUID = uuid.UUID("0d9c6b8e-3f4a-4c1e-9b7d-2a5e8f1c3b6d")
SCOPE = f"user:{SCOPE_UUID}"

VolumeFactory = Callable[..., AbstractVolume]


@pytest.fixture(params=["vfs", "object"])
async def make_volume(request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server) -> AsyncIterator[VolumeFactory]:
    made: list[AbstractVolume] = []
    bucket = s3.make_bucket("vol") if request.param == "object" else None

    def make(**kw: object) -> AbstractVolume:
        volume: AbstractVolume
        if bucket is None:
            volume = VFSVolume("local", tmp_path / "mount", fsync=False, **kw)  # type: ignore[arg-type]
        else:
            volume = ObjectVolume(
                "minio",
                s3.endpoint,
                bucket,
                "vfroot",
                multipart_threshold=5 * MiB,
                part_size=5 * MiB,
                **kw,  # type: ignore[arg-type]
            )
        made.append(volume)
        return volume

    yield make
    for volume in made:
        await volume.aclose()


async def new_vfolder(volume: AbstractVolume, scope: str = SCOPE) -> VFolderID:
    vfid = VFolderID(scope, uuid.uuid4())
    await volume.create_vfolder(vfid)
    return vfid


async def vfolder_files(volume: AbstractVolume, vfid: VFolderID) -> dict[str, bytes]:
    """Every file in the vfolder, read through the volume's own backend (not through our adapter)."""
    if isinstance(volume, VFSVolume):
        root = volume.vfolder_path(vfid)
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
    assert isinstance(volume, ObjectVolume)
    client = volume.root.endpoint.client(max_connections=1)
    prefix = f"vfroot/{volume.vfolder_prefix(vfid)}/"
    found = {}
    for obj in client.list_objects(volume.root.bucket, prefix=prefix, recursive=True):
        resp = client.get_object(volume.root.bucket, obj.object_name)
        found[str(obj.object_name)[len(prefix) :]] = resp.read()
        resp.close()
        resp.release_conn()
    return found


def leftovers(volume: AbstractVolume) -> list[str]:
    """Temp files or incomplete multipart uploads anywhere on the volume."""
    if isinstance(volume, VFSVolume):
        return [str(p) for p in in_flight_files(volume.mount)]
    assert isinstance(volume, ObjectVolume)
    client = volume.root.endpoint.client(max_connections=1)
    return [u.object_name for u in client._list_multipart_uploads(volume.root.bucket).uploads]


def expected(hub: LocalHub, repo: str) -> dict[str, bytes]:
    commit = hub.repos[repo].refs["main"]
    return {path: f.disk.read_bytes() for path, f in hub.repos[repo].commits[commit].items()}


def service(volume: AbstractVolume, **kw: object) -> tuple[ImportService, str]:
    registry = fast_registry()
    svc = ImportService({registry.name: registry}, volume_pool=VolumePool({volume.name: volume}), **kw)  # type: ignore[arg-type]
    return svc, registry.name


async def start_each_in_its_folder(
    svc: ImportService, registry: str, volume: AbstractVolume, vfid: VFolderID, repos: list[str]
) -> list[str]:
    """Start one import per repository into the vfolder, each in a folder named after it."""
    return [
        await svc.start_import(
            ModelTarget.from_uri(f"hf://{repo}"), registry, vfolder=VFolderRef(volume.name, vfid, repo.split("/")[1])
        )
        for repo in repos
    ]


def body_requests(hub: LocalHub) -> list[str]:
    return [path for method, path, _ in hub.requests if method == "GET"]


async def test_import_into_a_vfolder_lands_there_and_is_charged_to_its_scope(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    volume = make_volume()
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    task_id = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    (result,) = await svc.wait(task_id)
    files = await vfolder_files(volume, vfid)
    stored = sum(len(b) for b in files.values())
    manifest = json.loads(files.pop(MANIFEST_PATH))
    assert files == expected(hub, repo)
    assert manifest["commit"] == result.commit
    assert svc.get(task_id).state is TaskState.SUCCEEDED
    assert result.destination.startswith(f"vfolder_storage_{task_id} (vfolder {vfid} on volume {volume.name}")
    usage = await volume.get_quota(SCOPE)
    assert usage.used == stored > TOTAL
    assert usage.in_flight == 0
    if isinstance(volume, VFSVolume):
        h = vfid.folder_id.hex
        assert volume.vfolder_path(vfid) == volume.mount / SCOPE_UUID.hex / h[:2] / h[2:4] / h[4:]
    assert (await volume.reconcile_usage(SCOPE)).used == usage.used, "the record matches a full measurement"
    assert leftovers(volume) == []


async def test_import_into_a_subpath_of_a_vfolder(hub: LocalHub, make_volume: VolumeFactory) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, {"config.json": b"{}", "w.bin": 2 * MiB})
    volume = make_volume()
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    ref = VFolderRef.parse(f"{volume.name}/{vfid}/models/{repo.split('/')[1]}")
    await svc.wait(await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=ref))
    files = await vfolder_files(volume, vfid)
    sub = f"models/{repo.split('/')[1]}"
    assert {p for p in files} == {f"{sub}/config.json", f"{sub}/w.bin", f"{sub}/{MANIFEST_PATH}"}
    assert files[f"{sub}/w.bin"] == expected(hub, repo)["w.bin"]


async def test_quota_exceeded_up_front_says_what_is_needed_and_left_and_downloads_nothing(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    volume = make_volume(quotas={SCOPE: 8 * MiB})
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    task_id = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    with pytest.raises(QuotaExceededError) as err:
        await svc.wait(task_id)
    message = str(err.value)
    assert "needs 9.0 MiB" in message and "has 8.0 MiB left" in message and SCOPE in message
    task = svc.get(task_id)
    assert task.state is TaskState.FAILED and task.to_dict()["error"]["type"] == "QuotaExceededError"
    assert body_requests(hub) == [], "refused before any byte moved"
    assert await vfolder_files(volume, vfid) == {}
    assert (await volume.get_quota(SCOPE)).used == 0


async def test_writing_beyond_the_reservation_into_a_full_scope_aborts_and_keeps_nothing(
    make_volume: VolumeFactory,
) -> None:
    volume = make_volume(quotas={SCOPE: 4 * MiB})
    vfid = await new_vfolder(volume)
    adapter = VolumeStorageAdapter("vfolder_storage_t", volume, vfid)
    await adapter.stream_upload("kept.bin", _chunks(MiB))

    async def lying() -> None:
        async with adapter.reserve(MiB):  # announced 1 MiB, sends 6 MiB in 1 MiB chunks
            await adapter.stream_upload("big.bin", _chunks(6 * MiB))

    with pytest.raises(QuotaExceededError, match=rf"big.bin: quota scope '{SCOPE}'.* is full"):
        await lying()
    assert set(await vfolder_files(volume, vfid)) == {"kept.bin"}
    assert leftovers(volume) == []
    usage = await volume.get_quota(SCOPE)
    assert (usage.used, usage.in_flight) == (MiB, 0)
    assert (await volume.reconcile_usage(SCOPE)).used == MiB


async def test_a_listing_that_lies_about_sizes_fails_the_import_and_keeps_nothing(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    hub.faults.listed_size["weights/shard-1.bin"] = MiB  # really 6 MiB
    volume = make_volume(quotas={SCOPE: 5 * MiB})  # the listed 4 MiB fit; the real 9 MiB do not
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    task_id = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    # The download stops at the listed size (more is an integrity error); the
    # quota holds either way, as the test above shows for writes beyond it.
    with pytest.raises(IntegrityError, match=r"weights/shard-1\.bin: the source sent more than"):
        await svc.wait(task_id)
    assert await vfolder_files(volume, vfid) == {}
    assert leftovers(volume) == []
    usage = await volume.get_quota(SCOPE)
    assert (usage.used, usage.in_flight) == (0, 0)


@pytest.mark.parametrize(
    "path",
    ["../escape.bin", "/etc/passwd", "a/../../b", "a/./b", "a\\..\\b", "a\x00b", "a//b"],
)
async def test_paths_that_escape_the_vfolder_are_refused(make_volume: VolumeFactory, path: str) -> None:
    volume = make_volume()
    vfid = await new_vfolder(volume)
    adapter = VolumeStorageAdapter("vfolder_storage_t", volume, vfid)
    with pytest.raises(UnsafePathError):
        await adapter.stream_upload(path, _chunks(10))
    with pytest.raises(UnsafePathError):
        await volume.sanitize_vfpath(vfid, path)
    assert await vfolder_files(volume, vfid) == {}


def test_vfolder_ids_read_as_backend_ai_writes_them() -> None:
    """``user:<uuid>/<hex>``, what the manager sends, names the same vfolder however the UUID is spelled; the
    scope's folder is the UUID's hex (Backend.AI's ``QuotaScopeID.pathname``); names of our own stay as given."""
    folder = uuid.uuid4()
    vfid = VFolderID.parse(f"USER:{SCOPE_UUID.hex.upper()}/{folder.hex}")
    assert vfid == VFolderID(SCOPE, folder)
    assert str(vfid) == f"user:{SCOPE_UUID}/{folder.hex}"
    assert vfid.scope_pathname == SCOPE_UUID.hex
    assert VFolderID("team-a", folder).scope_pathname == "team-a"
    volume = VFSVolume("local", "/mnt/vfroot")
    h = folder.hex
    assert volume.vfolder_path(vfid) == Path("/mnt/vfroot", SCOPE_UUID.hex, h[:2], h[2:4], h[4:])


@pytest.mark.parametrize("scope", ["user:not-a-uuid", "project:", f"user:{SCOPE_UUID}/x", "user:../x"])
def test_a_backend_ai_scope_without_a_uuid_is_refused(scope: str) -> None:
    with pytest.raises(ConfigError, match="quota scope"):
        VFolderID(scope, uuid.uuid4())


@pytest.mark.parametrize("text", ["local/user-1/not-a-uuid", "local/../x/" + uuid.uuid4().hex, "local", "local/u"])
def test_malformed_vfolder_refs_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        VFolderRef.parse(text)


def test_a_vfolder_subpath_cannot_escape() -> None:
    with pytest.raises(ConfigError, match="subpath"):
        VFolderRef.parse(f"local/user-1/{uuid.uuid4().hex}/../other")


async def test_a_symlink_planted_in_a_vfs_vfolder_refuses_the_import_before_any_download(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    outside = tmp_path / "outside"
    outside.mkdir()
    volume = VFSVolume("local", tmp_path / "mount", fsync=False)
    vfid = await new_vfolder(volume)
    os.symlink(outside, volume.vfolder_path(vfid) / "weights")
    svc, reg = service(volume)
    task_id = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    with pytest.raises(UnsafePathError, match=r"weights/shard-1\.bin"):
        await svc.wait(task_id)
    assert body_requests(hub) == []
    assert list(outside.iterdir()) == []
    assert [p.name for p in volume.vfolder_path(vfid).iterdir()] == ["weights"]


async def test_a_read_only_vfolder_or_volume_is_refused_before_any_download(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    writable = make_volume()
    vfid = await new_vfolder(writable)
    for volume in (make_volume(read_only_vfolders=[vfid]), make_volume(read_only=True)):
        svc, reg = service(volume)
        task_id = await svc.start_import(
            ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid)
        )
        with pytest.raises(ReadOnlyStorageError, match="read-only"):
            await svc.wait(task_id)
    assert body_requests(hub) == []
    assert await vfolder_files(writable, vfid) == {}


async def test_a_missing_vfolder_or_volume_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    volume = VFSVolume("local", tmp_path / "mount")
    svc, reg = service(volume)
    model = ModelTarget.from_uri(f"hf://{repo}")
    with pytest.raises(VFolderNotFoundError, match="no volume named 'elsewhere'"):
        await svc.start_import(model, reg, vfolder=VFolderRef("elsewhere", VFolderID(SCOPE, uuid.uuid4())))
    task_id = await svc.start_import(model, reg, vfolder=VFolderRef("local", VFolderID(SCOPE, uuid.uuid4())))
    with pytest.raises(VFolderNotFoundError, match="does not exist"):
        await svc.wait(task_id)
    assert not (tmp_path / "mount").exists(), "no vfolder was created by the import"


async def test_concurrent_imports_into_one_vfolder_keep_their_files_and_the_usage_right(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repos = [repo_name("vf") for _ in range(2)]
    for n, repo in enumerate(repos):
        hub.create_repo(repo, {"config.json": b'{"n": %d}' % n, "w.bin": 2 * MiB + n, "x.bin": 3 * MiB})
    volume = make_volume(quotas={SCOPE: 100 * MiB})
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    ids = await start_each_in_its_folder(svc, reg, volume, vfid, repos)
    await asyncio.gather(*(svc.wait(i) for i in ids))
    files = await vfolder_files(volume, vfid)
    for repo in repos:
        sub = repo.split("/")[1]
        for path, data in expected(hub, repo).items():
            assert files[f"{sub}/{path}"] == data
    usage = await volume.get_quota(SCOPE)
    assert usage.used == sum(len(b) for b in files.values())
    assert (await volume.reconcile_usage(SCOPE)).used == usage.used
    assert usage.in_flight == 0


async def test_two_imports_that_fit_only_one_at_a_time_one_is_refused_up_front(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repos = [repo_name("vf") for _ in range(2)]
    for repo in repos:
        hub.create_repo(repo, {"w.bin": 4 * MiB})
    hub.faults.slow_bps = 8 * MiB  # both are still running when the second one reserves
    volume = make_volume(quotas={SCOPE: 6 * MiB})
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    ids = await start_each_in_its_folder(svc, reg, volume, vfid, repos)
    outcomes = await asyncio.gather(*(svc.wait(i) for i in ids), return_exceptions=True)
    failed = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], QuotaExceededError), outcomes
    files = await vfolder_files(volume, vfid)
    assert len([p for p in files if p.endswith("w.bin")]) == 1
    usage = await volume.get_quota(SCOPE)
    assert usage.used == sum(len(b) for b in files.values()) <= 6 * MiB
    assert leftovers(volume) == []


async def test_background_task_is_observable_while_running_and_after_failure_or_cancel(
    hub: LocalHub, make_volume: VolumeFactory
) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, {"w.bin": 4 * MiB, "config.json": b"{}"})
    volume = make_volume()
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    hub.faults.slow_bps = 2 * MiB
    task_id = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    task = svc.get(task_id)
    assert task.state is TaskState.QUEUED, "start_import returns at once, before the task ran"
    for _ in range(200):
        if any(f.bytes_done for f in task.models[0].files.values()):
            break
        await asyncio.sleep(0.02)
    progress = task.to_dict()
    files = progress["models"][0]["files"]
    assert progress["state"] == "running" and {f["path"] for f in files} == {"w.bin", "config.json"}
    assert await svc.cancel(task_id) is task
    assert task.state is TaskState.CANCELLED
    with pytest.raises(Exception, match="cancelled"):
        await svc.wait(task_id)
    assert await vfolder_files(volume, vfid) == {}
    assert leftovers(volume) == []
    assert (await volume.get_quota(SCOPE)).in_flight == 0

    hub.faults.slow_bps = 0
    missing = await svc.start_import(
        ModelTarget.from_uri("hf://test-org/does-not-exist"), reg, vfolder=VFolderRef(volume.name, vfid)
    )
    with pytest.raises(RepositoryNotFoundError):
        await svc.wait(missing)
    failed = svc.get(missing).to_dict()
    assert failed["state"] == "failed" and failed["error"]["type"] == "RepositoryNotFoundError"

    done = await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    await svc.wait(done)
    ok = svc.get(done).to_dict()
    assert ok["state"] == "succeeded" and ok["models"][0]["result"]["file_count"] == 2
    assert {f["state"] for f in ok["models"][0]["files"]} == {"done"}


async def test_a_staging_storage_from_the_pool_takes_download_and_verify(
    hub: LocalHub, tmp_path: Path, make_volume: VolumeFactory
) -> None:
    from artifact_import import StoragePool, VFSStorage

    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    volume = make_volume()
    vfid = await new_vfolder(volume)
    staging = VFSStorage("scratch", tmp_path / "scratch", fsync=False)
    svc, reg = service(volume, storage_pool=StoragePool({"scratch": staging}), staging="scratch")
    await svc.wait(
        await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef(volume.name, vfid))
    )
    files = await vfolder_files(volume, vfid)
    files.pop(MANIFEST_PATH)
    assert files == expected(hub, repo)
    assert not any(p.is_file() for p in (tmp_path / "scratch").rglob("*")), "staged copies removed"


CONFIG = """
[volume.local]
backend = "vfs"
path = "{mount}"
fsync = false
read-only-vfolders = ["{scope}/{ro}"]
[volume.local.quotas]
"{scope}" = "{limit}"
"""


def _cli_setup(tmp_path: Path, limit: str) -> tuple[Path, VFSVolume, VFolderID, VFolderID]:
    mount = tmp_path / "mount"
    volume = VFSVolume("local", mount)
    vfid, ro = VFolderID(SCOPE, uuid.uuid4()), VFolderID(SCOPE, uuid.uuid4())
    for v in (vfid, ro):
        volume.vfolder_path(v).mkdir(parents=True)
    config = tmp_path / "proxy.toml"
    config.write_text(CONFIG.format(mount=mount, scope=SCOPE, ro=ro.folder_id.hex, limit=limit))
    return config, volume, vfid, ro


def test_cli_imports_into_a_vfolder_and_reports_quota_and_read_only(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, FILES)
    config, volume, vfid, ro = _cli_setup(tmp_path, "10MiB")
    env = {"HF_ENDPOINT": os.environ["HF_ENDPOINT"]}
    done = run_cli(
        "--config", str(config), "import", f"hf://{repo}", "--to", f"vfolder:local/{vfid}/m", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["destination"] == f"vfolder:local/{vfid}/m", "as the user gave it"
    root = volume.vfolder_path(vfid) / "m"
    assert (root / "weights" / "shard-1.bin").read_bytes() == expected(hub, repo)["weights/shard-1.bin"]
    intact = run_cli("--config", str(config), "verify", f"vfolder:local/{vfid}/m")
    assert intact.returncode == 0 and intact.stdout.startswith("intact: 4 file(s)"), intact.stderr
    (root / "config.json").unlink()
    broken = run_cli("--config", str(config), "verify", f"vfolder:local/{vfid}/m")
    assert broken.returncode == 3 and "missing: config.json" in broken.stdout
    (root / "config.json").write_bytes(expected(hub, repo)["config.json"])

    again = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", f"vfolder:local/{vfid}/n", env=env)
    assert again.returncode == 1
    assert f"quota scope '{SCOPE}'" in again.stderr and "left" in again.stderr and "Traceback" not in again.stderr
    # The vfolder is named as the user wrote it, not by an internal storage name.
    assert again.stderr.startswith(f"error: vfolder:local/{vfid}/n ") and "vfolder_storage_" not in again.stderr
    assert not (volume.vfolder_path(vfid) / "n").exists()

    denied = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", f"vfolder:local/{ro}", env=env)
    assert denied.returncode == 1 and "read-only" in denied.stderr

    bad = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", f"vfolder:local/{vfid}/../x", env=env)
    assert bad.returncode == 2 and "subpath" in bad.stderr


def test_config_volume_mistakes_name_the_line_and_key(tmp_path: Path) -> None:
    from artifact_import.config import load_config

    config = tmp_path / "bad.toml"
    config.write_text('[volume.local]\nbackend = "vfs"\npath = "/x"\n[volume.local.quotas]\n"a/b" = "1GiB"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:5: volume.local.quotas.a/b: .*not a quota scope id"):
        load_config(config)
    config.write_text('[volume.local]\nbackend = "vfs"\npath = "/x"\nread-only-vfolders = ["u/zz"]\n')
    with pytest.raises(ConfigError, match=r"bad.toml:4: volume.local.read-only-vfolders: 'zz' is not a vfolder id"):
        load_config(config)
    config.write_text('[volume.local]\nbackend = "vfs"\npath = "/x"\n[volume.local.quotas]\nu = "lots"\n')
    with pytest.raises(ConfigError, match=r"bad.toml:5: volume.local.quotas.u: must be a size"):
        load_config(config)


async def test_object_volume_usage_record_is_read_back_without_a_listing(s3: S3Server, hub: LocalHub) -> None:
    repo = repo_name("vf")
    hub.create_repo(repo, {"w.bin": 2 * MiB})
    bucket = s3.make_bucket("vol")
    volume = ObjectVolume("minio", s3.endpoint, bucket, "vfroot")
    vfid = await new_vfolder(volume)
    svc, reg = service(volume)
    await svc.wait(await svc.start_import(ModelTarget.from_uri(f"hf://{repo}"), reg, vfolder=VFolderRef("minio", vfid)))
    used = (await volume.get_quota(SCOPE)).used
    await volume.aclose()
    # Another process: objects added behind its back are not seen until it reconciles.
    client = s3.endpoint.client(max_connections=1)
    client.put_object(bucket, f"vfroot/{SCOPE_UUID.hex}/{uuid.uuid4().hex}/extra", _bytes_io(1000), 1000)
    again = ObjectVolume("minio", s3.endpoint, bucket, "vfroot")
    try:
        assert (await again.get_quota(SCOPE)).used == used
        assert (await again.reconcile_usage(SCOPE)).used == used + 1000
        third = ObjectVolume("minio", s3.endpoint, bucket, "vfroot")
        assert (await third.get_quota(SCOPE)).used == used + 1000, "reconciling stored the record"
        await third.aclose()
    finally:
        await again.aclose()


def _bytes_io(n: int) -> object:
    import io

    return io.BytesIO(b"x" * n)


async def _chunks(total: int, size: int = MiB) -> AsyncIterator[bytes]:
    sent = 0
    while sent < total:
        n = min(size, total - sent)
        sent += n
        yield b"v" * n


async def test_deleting_files_credits_the_scope_and_mkdir_stays_inside(make_volume: VolumeFactory) -> None:
    volume = make_volume(quotas={SCOPE: 4 * MiB})
    vfid = await new_vfolder(volume)
    adapter = VolumeStorageAdapter("vfolder_storage_t", volume, vfid, "sub")
    await adapter.stream_upload("a/one.bin", _chunks(3 * MiB))
    assert (await adapter.get_file_info("a/one.bin")).size == 3 * MiB
    with pytest.raises(QuotaExceededError):
        await adapter.stream_upload("a/two.bin", _chunks(2 * MiB))
    await adapter.delete_file("a/one.bin")
    await adapter.delete_file("a/never-there.bin")
    assert (await volume.get_quota(SCOPE)).used == 0
    await adapter.stream_upload("a/two.bin", _chunks(2 * MiB))
    assert [c async for c in adapter.stream_download("a/two.bin")] == [b"v" * MiB] * 2
    assert (await volume.reconcile_usage(SCOPE)).used == 2 * MiB
    await volume.mkdir(vfid, "sub/empty/deeper")
    if isinstance(volume, VFSVolume):
        assert (volume.vfolder_path(vfid) / "sub" / "empty" / "deeper").is_dir()
    with pytest.raises(UnsafePathError):
        await volume.mkdir(vfid, "../outside")
