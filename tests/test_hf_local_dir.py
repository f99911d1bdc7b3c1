"""A directory we imported into is one `hf download --local-dir` takes for downloaded: no file fetched twice.

huggingface_hub reads HF_ENDPOINT when it is imported (before the ``hub`` fixture sets it), so the calls made in
this process pass ``endpoint``; the `hf` command runs as a child with the environment.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from huggingface_hub import hf_hub_download, snapshot_download

from artifact_import import MANIFEST_PATH, import_artifact
from artifact_import.storages.hflocal import metadata_path

from .conftest import ROOT, fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub, safetensors_header
from .s3server import S3Server

KiB = 1 << 10
_HEADER = safetensors_header(200 * KiB)
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/vocab.json": b'{"a": 0}',
    "model.safetensors": _HEADER + os.urandom(200 * KiB - len(_HEADER)),
}


def endpoint() -> str:
    return os.environ["HF_ENDPOINT"]


def fetched(hub: LocalHub) -> list[str]:
    return sorted(path for method, path, _ in hub.requests if method == "GET")


def published(hub: LocalHub, repo: str) -> dict[str, bytes]:
    return {path: f.disk.read_bytes() for path, f in hub.repos[repo].commits[hub.repos[repo].refs["main"]].items()}


def artifact_files(dest: Path) -> dict[str, bytes]:
    return {p: b for p, b in files_under(dest).items() if p != MANIFEST_PATH}


def hf_download(repo: str, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "hf"), "download", repo, "--local-dir", str(dest)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
        cwd=ROOT,
    )


async def test_hf_download_takes_an_imported_directory_for_downloaded(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("local")
    commit = hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    metadata = (dest / metadata_path("model.safetensors")).read_text().splitlines()
    assert metadata[:2] == [commit, hub.repos[repo].commits[commit]["model.safetensors"].sha256]
    hub.requests.clear()

    for path in FILES:
        # By branch (a HEAD asks the Hub for the ETag, which the metadata matches) and by commit (no request).
        for revision in ("main", commit):
            got = hf_hub_download(repo, path, revision=revision, local_dir=dest, endpoint=endpoint())
            assert Path(got) == dest / path
    assert Path(snapshot_download(repo, local_dir=dest, endpoint=endpoint())) == dest.resolve()
    cli = hf_download(repo, dest)
    assert cli.returncode == 0, cli.stderr
    assert fetched(hub) == [], "not one file body requested"
    assert artifact_files(dest) == published(hub, repo), "nothing rewritten either"

    # What huggingface_hub left beside (locks, its tree cache) is its own: verify does not call it extra.
    assert any(p.name.endswith(".lock") for p in (dest / ".cache" / "huggingface").rglob("*"))
    checked = run_cli("verify", str(dest))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "extra" not in checked.stdout


async def test_importing_again_keeps_the_metadata_of_what_it_skipped(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("local")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    before = files_under(dest, bookkeeping=True)
    hub.requests.clear()
    again = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert again.skipped == 3 and fetched(hub) == []
    after = files_under(dest, bookkeeping=True)
    assert {p: b for p, b in after.items() if p.startswith(".cache/")} == {
        p: b for p, b in before.items() if p.startswith(".cache/")
    }

    # A file changed in place is fetched again, and its metadata renewed (huggingface_hub would ignore the old
    # one anyway: the file is newer than it).
    (dest / "config.json").write_bytes(b'{"hidden_size": 9}')
    hub.requests.clear()
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert fetched(hub) == ["config.json"]
    assert after[metadata_path("config.json")] != (dest / metadata_path("config.json")).read_bytes()
    hub.requests.clear()
    hf_hub_download(repo, "config.json", local_dir=dest, endpoint=endpoint())
    assert fetched(hub) == []


async def test_an_import_finished_after_an_interruption_is_recognised_too(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("local")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    # Paced (64 KiB blocks at 100 KiB/s): the drop comes a second and more after the small files were fetched,
    # so they are verified by then, even on a busy machine.
    hub.faults.drop_after["model.safetensors"] = [150 * KiB]
    hub.faults.slow_bps = 100 * KiB
    first = run_cli("import", f"hf://{repo}", "--to", str(dest), "--retries", "1", "--connections", "1")
    assert first.returncode != 0 and not (dest / metadata_path("config.json")).exists()
    hub.faults.slow_bps = 0
    hub.requests.clear()
    second = run_cli("import", f"hf://{repo}", "--to", str(dest))
    assert second.returncode == 0, second.stderr
    assert fetched(hub) == ["model.safetensors"]
    hub.requests.clear()
    assert hf_download(repo, dest).returncode == 0
    assert fetched(hub) == []
    assert artifact_files(dest) == published(hub, repo)


async def test_an_artifact_with_files_of_its_own_there_keeps_them(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    own = b"not huggingface_hub's metadata"
    hub.create_repo(repo, {**FILES, metadata_path("config.json"): own})
    dest = tmp_path / "m"
    await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert (dest / metadata_path("config.json")).read_bytes() == own
    assert not (dest / metadata_path("model.safetensors")).exists()
    checked = run_cli("verify", str(dest))
    assert checked.returncode == 0, checked.stdout + checked.stderr


async def test_a_destination_where_the_metadata_cannot_go_still_imports(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("local")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    dest.mkdir()
    (dest / ".cache").write_bytes(b"a file of the user's, where huggingface_hub keeps a folder")
    result = await import_artifact(f"hf://{repo}", dest, registry=fast_registry())
    assert len(result.files) == 3 and (dest / "config.json").read_bytes() == FILES["config.json"]
    assert (dest / ".cache").read_bytes().startswith(b"a file of the user's")


def test_files_from_s3_get_no_hub_metadata(hub: LocalHub, s3: S3Server, tmp_path: Path) -> None:
    repo = repo_name("local")
    hub.create_repo(repo, FILES)
    bucket = s3.make_bucket("local")
    assert run_cli("import", f"hf://{repo}", "--to", f"s3://{bucket}/m", env=s3.env()).returncode == 0
    dest = tmp_path / "m"
    assert run_cli("import", f"s3://{bucket}/m", "--to", str(dest), env=s3.env()).returncode == 0
    assert not (dest / ".cache").exists()
