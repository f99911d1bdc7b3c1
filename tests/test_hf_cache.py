"""The Hugging Face cache as a destination, checked with huggingface_hub itself (in this process and as `hf`).

huggingface_hub reads its settings (HF_HUB_CACHE, HF_HUB_OFFLINE) when it is imported, so what depends on them
runs in a child process with its own environment; in this process the cache is always passed as ``cache_dir``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download, scan_cache_dir, snapshot_download
from huggingface_hub.errors import LocalEntryNotFoundError

from artifact_import import (
    MANIFEST_PATH,
    ConfigError,
    HFCacheStorage,
    PickleVerifier,
    UnsafePathError,
    VerificationError,
    import_artifact,
)
from artifact_import.storages.hfcache import default_cache_dir

from .conftest import ROOT, fast_registry, repo_name, run_cli, start_import, wait_until
from .hub import LocalHub, safetensors_header
from .s3server import S3Server

KiB = 1 << 10


def safetensors(size: int) -> bytes:
    header = safetensors_header(size)
    return header + os.urandom(size - len(header))


#: The same bytes in every commit that lists them (sizes alone would be new random bytes per commit).
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/vocab.json": b'{"a": 0, "b": 1}',
    "model.safetensors": safetensors(300 * KiB),
    "weights/shard-1.bin": os.urandom(120 * KiB),
}


def endpoint() -> str:
    """The local hub (huggingface_hub read HF_ENDPOINT when it was imported, before the fixture set it)."""
    return os.environ["HF_ENDPOINT"]


def fetched(hub: LocalHub) -> list[str]:
    return sorted(path for method, path, _ in hub.requests if method == "GET")


def folder(cache: Path, repo: str, kind: str = "models") -> Path:
    return cache / f"{kind}--{repo.replace('/', '--')}"


def published(hub: LocalHub, repo: str, rev: str = "main") -> dict[str, bytes]:
    files = hub.repos[repo].commits[hub.repos[repo].resolve(rev) or rev]
    return {path: f.disk.read_bytes() for path, f in files.items()}


def tree(snapshot: Path) -> dict[str, bytes]:
    return {p.relative_to(snapshot).as_posix(): p.read_bytes() for p in sorted(snapshot.rglob("*")) if p.is_file()}


def hf_child(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``code`` run by a fresh interpreter, so that huggingface_hub reads ``env`` as it would in a user's shell."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env},
        cwd=ROOT,
    )


def hf_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hf"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1", **env},
        cwd=ROOT,
    )


async def test_huggingface_hub_finds_every_file_offline_and_its_own_checks_pass(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cache")
    commit = hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    result = await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert result.commit == commit and len(result.files) == 4
    expected = published(hub, repo)

    snapshot = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    assert snapshot == folder(cache, repo) / "snapshots" / commit
    assert tree(snapshot) == expected
    for path, body in expected.items():
        assert Path(hf_hub_download(repo, path, cache_dir=cache, local_files_only=True)).read_bytes() == body
    # The layout huggingface_hub writes: relative links into blobs named by the Hub's ETag.
    for path, f in hub.repos[repo].commits[commit].items():
        link = snapshot / path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert os.path.realpath(link) == str((folder(cache, repo) / "blobs" / f.etag).resolve())
    assert (folder(cache, repo) / "refs" / "main").read_text() == commit

    info = scan_cache_dir(cache)
    assert info.warnings == []
    (cached,) = info.repos
    assert (cached.repo_id, cached.repo_type, cached.nb_files) == (repo, "model", 4)
    (revision,) = cached.revisions
    assert revision.commit_hash == commit and revision.refs == frozenset({"main"})
    assert info.incomplete_files == frozenset()

    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    offline = hf_child(
        f"""
        from huggingface_hub import hf_hub_download, snapshot_download
        print(snapshot_download({repo!r}))
        for path in {sorted(expected)!r}:
            print(hf_hub_download({repo!r}, path))
        """,
        env,
    )
    assert offline.returncode == 0, offline.stderr
    assert offline.stdout.splitlines() == [str(snapshot), *(str(snapshot / p) for p in sorted(expected))]

    listed = hf_cli("cache", "ls", "--format", "json", env={"HF_HUB_CACHE": str(cache)})
    assert listed.returncode == 0, listed.stderr
    assert [(r["repo_id"], r["repo_type"], r["refs"]) for r in json.loads(listed.stdout)] == [(repo, "model", ["main"])]
    checked = hf_cli("cache", "verify", repo, "--cache-dir", str(cache), "--fail-on-missing-files", env={})
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "Verified 4 file(s)" in checked.stdout and "All checksums match" in checked.stdout
    assert fetched(hub) == sorted(expected), "hf cache verify reads the cache, it fetches nothing"


async def test_datasets_and_spaces_go_under_their_prefixes(hub: LocalHub, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    for kind in ("dataset", "space"):
        repo = repo_name(kind)
        hub.create_repo(repo, {"data/train.csv": b"a,b\n1,2\n", "README.md": b"# x"}, repo_type=kind)
        await import_artifact(f"hf://{kind}s/{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
        snapshot = snapshot_download(repo, repo_type=kind, cache_dir=cache, local_files_only=True)
        assert Path(snapshot).is_relative_to(folder(cache, repo, f"{kind}s"))
        assert (Path(snapshot) / "data" / "train.csv").read_bytes() == b"a,b\n1,2\n"
    info = scan_cache_dir(cache)
    assert info.warnings == [] and {r.repo_type for r in info.repos} == {"dataset", "space"}


async def test_a_new_revision_fetches_only_what_changed_and_shares_the_blobs(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cache")
    first = hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    second = hub.commit(repo, {**FILES, "weights/shard-1.bin": os.urandom(121 * KiB), "added.txt": b"new"})
    hub.requests.clear()
    result = await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert result.commit == second
    # Unchanged files, small ones too (known by their git sha1), are not fetched again.
    assert fetched(hub) == ["added.txt", "weights/shard-1.bin"]

    repo_dir = folder(cache, repo)
    old, new = repo_dir / "snapshots" / first, repo_dir / "snapshots" / second
    assert tree(old) == published(hub, repo, first) and tree(new) == published(hub, repo, "main")
    for path in ("config.json", "tokenizer/vocab.json", "model.safetensors"):
        assert os.path.realpath(old / path) == os.path.realpath(new / path), f"{path} is one blob for both"
    assert (repo_dir / "refs" / "main").read_text() == second
    (cached,) = scan_cache_dir(cache).repos
    assert {r.commit_hash for r in cached.revisions} == {first, second}
    assert Path(snapshot_download(repo, revision=first, cache_dir=cache, local_files_only=True)) == old


async def test_a_cache_huggingface_hub_filled_is_verified_where_it_is_not_fetched_again(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("cache")
    commit = hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    snapshot_download(repo, cache_dir=cache, allow_patterns=["*.json", "model.safetensors"], endpoint=endpoint())
    assert len(fetched(hub)) == 3
    hub.requests.clear()
    events: list[tuple[str, str]] = []
    result = await import_artifact(
        f"hf://{repo}",
        HFCacheStorage(cache_dir=cache),
        registry=fast_registry(),
        on_progress=lambda e: events.append((e.path, e.state.value)),
    )
    assert fetched(hub) == ["weights/shard-1.bin"], "only what huggingface_hub had not downloaded"
    assert result.fetched_bytes == 120 * KiB
    # Verified all the same: every verdict of the import is on record for the files found in the cache.
    assert all(f.verdicts and all(v.ok for v in f.verdicts) for f in result.files)
    assert ("config.json", "verified") in events
    snapshot = folder(cache, repo) / "snapshots" / commit
    assert tree(snapshot) == published(hub, repo)
    assert scan_cache_dir(cache).warnings == []
    manifest = json.loads((folder(cache, repo) / MANIFEST_PATH).read_bytes())
    assert {f["path"] for f in manifest["files"]} == set(FILES)


async def test_a_tampered_blob_in_the_cache_is_fetched_again_and_replaced(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cache")
    commit = hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    snapshot_download(repo, cache_dir=cache, endpoint=endpoint())
    blob = folder(cache, repo) / "blobs" / hub.repos[repo].commits[commit]["model.safetensors"].etag
    body = bytearray(blob.read_bytes())
    body[1000] ^= 0xFF
    blob.write_bytes(bytes(body))
    hub.requests.clear()
    await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert fetched(hub) == ["model.safetensors"]
    assert blob.read_bytes() == published(hub, repo)["model.safetensors"]


async def test_a_dangerous_file_already_in_the_cache_is_refused_like_a_fetched_one(
    hub: LocalHub, tmp_path: Path
) -> None:
    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("true",))

    repo = repo_name("cache")
    hub.create_repo(repo, {"config.json": b"{}", "model.pkl": pickle.dumps(Evil())})
    cache = tmp_path / "cache"
    snapshot_download(repo, cache_dir=cache, endpoint=endpoint())
    hub.requests.clear()
    with pytest.raises(VerificationError, match=r"model\.pkl"):
        await import_artifact(
            f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry(), verifiers=[PickleVerifier()]
        )
    assert fetched(hub) == []
    assert not (folder(cache, repo) / MANIFEST_PATH).exists()


async def test_importing_more_of_a_commit_replaces_its_snapshot_in_one_step(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cache")
    commit = hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), include=["*.json"], registry=fast_registry())
    snapshot = folder(cache, repo) / "snapshots" / commit
    assert sorted(tree(snapshot)) == ["config.json", "tokenizer/vocab.json"]
    # A file huggingface_hub added to the same snapshot meanwhile stays.
    hf_hub_download(repo, "weights/shard-1.bin", cache_dir=cache, endpoint=endpoint())
    hub.requests.clear()
    await import_artifact(
        f"hf://{repo}", HFCacheStorage(cache_dir=cache), include=["*.safetensors"], registry=fast_registry()
    )
    assert fetched(hub) == ["model.safetensors"]
    assert tree(snapshot) == published(hub, repo)
    assert not list((folder(cache, repo) / ".artifact-import").glob("snapshot-*")), "the old snapshot is removed"
    assert scan_cache_dir(cache).warnings == []


def test_the_cli_fills_the_cache_huggingface_hub_uses(
    hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = repo_name("cache")
    commit = hub.create_repo(repo, FILES)
    home = tmp_path / "hf-home"
    env = {"HF_HOME": str(home)}
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    first = run_cli("import", f"hf://{repo}", "--to", "hf-cache:", "--json", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["destination"] == "hf-cache:"
    assert default_cache_dir({"HF_HOME": str(home)}) == home / "hub"
    assert tree(folder(home / "hub", repo) / "snapshots" / commit) == published(hub, repo)

    again = run_cli("import", f"hf://{repo}", "--to", "hf-cache:", env=env)
    assert again.returncode == 0 and "nothing to fetch" in again.stdout
    checked = run_cli("verify", "hf-cache:", "--repo", repo, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "intact: 4 file(s)" in checked.stdout
    # An explicit cache folder too.
    other = tmp_path / "other-cache"
    assert run_cli("import", f"hf://{repo}", "--to", f"hf-cache:{other}", env=env).returncode == 0
    assert tree(folder(other, repo) / "snapshots" / commit) == published(hub, repo)

    blob = folder(home / "hub", repo) / "blobs" / hub.repos[repo].commits[commit]["config.json"].etag
    blob.write_bytes(b'{"hidden_size": 9}')
    damaged = run_cli("verify", "hf-cache:", "--repo", repo, env=env)
    assert damaged.returncode == 3 and "changed: config.json" in damaged.stdout


def test_the_cli_says_what_hf_cache_needs(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cache")
    hub.create_repo(repo, FILES)
    cache = f"hf-cache:{tmp_path / 'cache'}"
    verify = run_cli("verify", cache)
    assert verify.returncode == 2 and "--repo" in verify.stderr
    wrong = run_cli("import", f"hf://{repo}", "--to", cache, "--hf-repo", "a/b", "--hf-commit", "0" * 40)
    assert wrong.returncode == 2 and "s3://" in wrong.stderr
    alone = run_cli("import", "s3://bucket/x", "--to", cache, "--hf-repo", "a/b")
    assert alone.returncode == 2 and "go together" in alone.stderr
    bad = run_cli("import", "s3://bucket/x", "--to", cache, "--hf-repo", "a/b", "--hf-commit", "main")
    assert bad.returncode == 2 and "40 hexadecimal" in bad.stderr
    elsewhere = run_cli(
        "import", "s3://bucket/x", "--to", str(tmp_path / "d"), "--hf-repo", "a/b", "--hf-commit", "0" * 40
    )
    assert elsewhere.returncode == 2 and "hf-cache:" in elsewhere.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "d").exists()


def test_an_s3_copy_of_a_repository_fills_the_cache_under_the_repository_named(
    hub: LocalHub, s3: S3Server, tmp_path: Path
) -> None:
    repo = repo_name("mirror")
    commit = hub.create_repo(repo, FILES)
    bucket = s3.make_bucket("mirror")
    up = run_cli("import", f"hf://{repo}", "--to", f"s3://{bucket}/{repo}", env=s3.env())
    assert up.returncode == 0, up.stderr
    cache = tmp_path / "cache"
    target = f"hf-cache:{cache}"
    unnamed = run_cli("import", f"s3://{bucket}/{repo}", "--to", target, env=s3.env())
    assert unnamed.returncode == 2 and "--hf-repo" in unnamed.stderr
    assert not folder(cache, repo).exists()

    named = ("--hf-repo", f"{repo}@v1", "--hf-commit", commit)
    down = run_cli("import", f"s3://{bucket}/{repo}", "--to", target, *named, "--json", env=s3.env())
    assert down.returncode == 0, down.stderr
    snapshot = Path(snapshot_download(repo, revision="v1", cache_dir=cache, local_files_only=True))
    assert snapshot.name == commit and tree(snapshot) == published(hub, repo)
    assert scan_cache_dir(cache).warnings == []
    again = run_cli("import", f"s3://{bucket}/{repo}", "--to", target, *named, env=s3.env())
    assert again.returncode == 0 and "nothing to fetch" in again.stdout


async def test_a_revision_that_would_leave_refs_is_refused_before_anything_is_visible(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("hostile")
    commit = hub.create_repo(repo, FILES)
    hub.repos[repo].refs["../../../escape"] = commit  # a hub that resolves any name it is given
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="escape"):
        await import_artifact(f"hf://{repo}@../../../escape", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert not (folder(cache, repo) / "snapshots" / commit).exists()
    assert not (tmp_path / "escape").exists() and not (cache / "escape").exists()


async def test_a_snapshots_folder_replaced_by_a_link_is_not_followed(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    folder(cache, repo).mkdir(parents=True)
    (folder(cache, repo) / "snapshots").symlink_to(outside)
    with pytest.raises(UnsafePathError):
        await import_artifact(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert list(outside.iterdir()) == []


def test_killed_mid_file_nothing_is_visible_and_the_next_run_goes_on(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("crash")
    commit = hub.create_repo(repo, {**FILES, "big.safetensors": safetensors(4 << 20)})
    hub.faults.slow_bps = 512 * KiB
    cache = tmp_path / "cache"
    part = folder(cache, repo) / ".artifact-import" / "partial" / "incomplete" / "big.safetensors"
    proc = start_import(repo, f"hf-cache:{cache}", "-q")
    wait_until(lambda: part.exists() and part.stat().st_size >= 1 << 20, proc, "bytes of the big file", timeout=60)
    proc.kill()
    proc.communicate()
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download(repo, cache_dir=cache, local_files_only=True)
    info = scan_cache_dir(cache)
    assert info.warnings == [] and all(not r.revisions for r in info.repos), "no snapshot, and no complaint"
    received = part.stat().st_size

    hub.faults.slow_bps = 0
    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", f"hf-cache:{cache}")
    assert again.returncode == 0, again.stderr
    ranges = [r for m, p, r in hub.requests if m == "GET" and p == "big.safetensors"]
    assert len(ranges) == 1 and ranges[0] is not None and int(ranges[0].split("=")[1].rstrip("-")) >= received
    assert tree(folder(cache, repo) / "snapshots" / commit) == published(hub, repo)
    left = sorted(p.name for p in (folder(cache, repo) / ".artifact-import").iterdir())
    assert left == ["hf-cache.json", "manifest.json"], "nothing in flight is left"


def test_an_import_the_source_cut_short_keeps_its_verified_files_for_the_next(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cut")
    commit = hub.create_repo(repo, {**FILES, "big.safetensors": safetensors(1 << 20)})
    hub.faults.drop_after["big.safetensors"] = [300 * KiB]
    cache = tmp_path / "cache"
    cut = run_cli("import", f"hf://{repo}", "--to", f"hf-cache:{cache}", "--retries", "1", "--connections", "1")
    assert cut.returncode == 1 and "kept aside" in cut.stderr, cut.stderr
    assert not (folder(cache, repo) / "snapshots" / commit).exists()
    assert scan_cache_dir(cache).warnings == []
    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", f"hf-cache:{cache}", "--json")
    assert again.returncode == 0, again.stderr
    # What was received is kept: the rest of the cut file is asked for. (A small file still in flight when the
    # cut ended the first run is fetched again, as the machine's load decides: not asserted.)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p == "big.safetensors"]
    assert len(ranges) == 1 and ranges[0] is not None and int(ranges[0].split("=")[1].rstrip("-")) > 0
    result = json.loads(again.stdout)
    assert result["fetched_bytes"] < result["total_bytes"]
    assert tree(folder(cache, repo) / "snapshots" / commit) == published(hub, repo)


def test_killed_while_committing_the_snapshot_is_whole_or_absent(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("crash")
    files: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(1500)}
    commit = hub.create_repo(repo, files)
    cache = tmp_path / "cache"
    blobs = folder(cache, repo) / "blobs"
    proc = start_import(repo, f"hf-cache:{cache}", "-q")
    wait_until(lambda: blobs.exists() and any(blobs.iterdir()), proc, "the commit", timeout=120)
    proc.kill()
    proc.communicate()
    snapshot = folder(cache, repo) / "snapshots" / commit
    assert not snapshot.exists() or tree(snapshot) == published(hub, repo), "whole or not at all"
    assert scan_cache_dir(cache).warnings == []

    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", f"hf-cache:{cache}")
    assert again.returncode == 0, again.stderr
    assert fetched(hub) == [], "every file was received before: verified where it is, not fetched"
    assert tree(snapshot) == published(hub, repo)
