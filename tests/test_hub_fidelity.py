"""The local hub speaks the Hub protocol well enough for huggingface_hub itself."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

from .conftest import files_under
from .hub import HubServer, LocalHub


def test_snapshot_download_fetches_a_repo_from_the_local_hub(
    hub: LocalHub, hub_server: HubServer, tmp_path: Path
) -> None:
    files: dict[str, bytes | int] = {
        "config.json": b'{"a": 1}',
        "nested/deeper/tokenizer.json": b'{"v": 2}',
        "model.safetensors": 1024 * 1024 + 5,
    }
    commit = hub.create_repo("fidelity/snapshot", files)
    path = snapshot_download("fidelity/snapshot", endpoint=hub_server.url, local_dir=tmp_path / "snap")
    got = {k: v for k, v in files_under(Path(path)).items() if not k.startswith(".cache/")}
    stored = hub.repos["fidelity/snapshot"].commits[commit]
    assert got == {p: f.disk.read_bytes() for p, f in stored.items()}
    # The LFS file went through the redirect to the "CDN" host, as on the real Hub.
    assert ("GET", "model.safetensors", None) in hub.requests


def test_hfapi_sees_sizes_digests_and_the_commit(hub: LocalHub, hub_server: HubServer) -> None:
    commit = hub.create_repo("fidelity/api", {"small.txt": b"hello\n", "big.bin": 20000}, tags=["v1"])
    api = HfApi(endpoint=hub_server.url)
    info = api.model_info("fidelity/api", revision="v1", files_metadata=True)
    assert info.sha == commit
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings["small.txt"].size == 6 and siblings["small.txt"].lfs is None
    # `printf 'hello\n' | git hash-object --stdin`
    assert siblings["small.txt"].blob_id == "ce013625030ba8dba906f756967f9e9ca394464a"
    big = hub.repos["fidelity/api"].commits[commit]["big.bin"]
    assert siblings["big.bin"].lfs is not None and siblings["big.bin"].lfs.sha256 == big.sha256
    tree = {e.path: e for e in api.list_repo_tree("fidelity/api", recursive=True, revision=commit)}
    assert tree["big.bin"].lfs.sha256 == big.sha256  # type: ignore[union-attr]


def test_hfapi_errors_map_to_huggingface_hub_exceptions(hub: LocalHub, hub_server: HubServer) -> None:
    hub.create_repo("fidelity/errors", {"a.txt": b"a"})
    hub.create_repo("fidelity/gated", {"a.txt": b"a"}, gated=True)
    api = HfApi(endpoint=hub_server.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("fidelity/missing")
    with pytest.raises(RevisionNotFoundError):
        api.model_info("fidelity/errors", revision="no-such-branch")
    with pytest.raises(GatedRepoError):
        api.hf_hub_download("fidelity/gated", "a.txt")


@pytest.mark.parametrize(
    ("repo_type", "repo_id"),
    [("dataset", "fidelity/data"), ("space", "fidelity/app"), ("model", "gpt2-fidelity")],
)
def test_snapshot_download_fetches_datasets_spaces_and_ids_without_a_namespace(
    hub: LocalHub, hub_server: HubServer, tmp_path: Path, repo_type: str, repo_id: str
) -> None:
    files: dict[str, bytes | int] = {"README.md": b"# card\n", "data/train-00000.parquet": 300_000}
    commit = hub.create_repo(repo_id, files, repo_type=repo_type)
    path = snapshot_download(repo_id, repo_type=repo_type, endpoint=hub_server.url, local_dir=tmp_path / "snap")
    got = {k: v for k, v in files_under(Path(path)).items() if not k.startswith(".cache/")}
    key = {"model": "", "dataset": "datasets/", "space": "spaces/"}[repo_type] + repo_id
    assert got == {p: f.disk.read_bytes() for p, f in hub.repos[key].commits[commit].items()}
    # A model of that name does not exist: the kinds are apart, as on the Hub.
    if repo_type != "model":
        with pytest.raises(RepositoryNotFoundError):
            HfApi(endpoint=hub_server.url).model_info(repo_id)
