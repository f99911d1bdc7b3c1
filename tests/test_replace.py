"""Files at the destination that no import wrote: never replaced silently (issue 23).

The proxy's API refuses to replace them unless the request says so; the CLI replaces them, as
``hf download`` does, and says which.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifact_import import DestinationConflictError, import_artifact

from .conftest import fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub


async def test_an_import_that_may_not_replace_names_the_files_no_import_wrote_and_writes_nothing(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("mine")
    hub.create_repo(repo, {"config.json": b'{"from": "hub"}', "model.safetensors": 4096, "sub/a.json": b"{}"})
    dest = tmp_path / "m"
    (dest / "sub").mkdir(parents=True)
    (dest / "config.json").write_bytes(b'{"mine": true}')
    (dest / "sub" / "a.json").write_bytes(b"my notes")
    (dest / "unrelated.txt").write_bytes(b"left alone")
    before = files_under(dest)
    with pytest.raises(DestinationConflictError, match=r"2 file\(s\) .* that no earlier import wrote: config\.json, "
                       r"sub/a\.json") as raised:  # fmt: skip
        await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), replace_existing=False)
    assert raised.value.files == ("config.json", "sub/a.json")
    assert files_under(dest) == before, "nothing written, nothing replaced"
    assert hub.requests == [], "refused before a byte moved"


async def test_files_an_earlier_import_wrote_are_replaced_without_asking(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("again")
    hub.create_repo(repo, {"config.json": b'{"v": 1}', "w.bin": 2048})
    dest = tmp_path / "m"
    first = await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), replace_existing=False)
    assert first.replaced == ()
    hub.commit(repo, {"config.json": b'{"v": 2}', "w.bin": 2048})
    second = await import_artifact(f"hf://{repo}", dest, registry=fast_registry(), replace_existing=False)
    assert second.replaced == () and (dest / "config.json").read_bytes() == b'{"v": 2}'


def test_the_cli_replaces_as_hf_download_does_and_says_which_files(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli-mine")
    hub.create_repo(repo, {"README.md": b"# from the hub\n", "config.json": b"{}"})
    for name in ("text", "json"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "README.md").write_bytes(b"# my own notes\n")
    done = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "text"))
    assert done.returncode == 0, done.stderr
    assert "replaced 1 existing file(s) no earlier import wrote: README.md" in done.stdout, done.stdout
    assert (tmp_path / "text" / "README.md").read_bytes() == b"# from the hub\n"
    done = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "json"), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["replaced"] == ["README.md"]
    again = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "json"), "--json", "--force")
    assert json.loads(again.stdout)["replaced"] == [], "written by the import before: not someone else's"
