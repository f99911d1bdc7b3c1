"""`import --dry-run` says what an import would fetch, skip and resume, and writes nothing anywhere."""

from __future__ import annotations

import json
import os
from pathlib import Path

from huggingface_hub import snapshot_download

from artifact_import import HFCacheStorage, plan_import

from .conftest import fast_registry, repo_name, run_cli
from .hub import LocalHub

KiB = 1 << 10
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer.json": b'{"vocab": {}}',
    "extra/notes.txt": b"notes",
    "model.bin": 400 * KiB,
}


def fetched(hub: LocalHub) -> list[str]:
    return sorted(path for method, path, _ in hub.requests if method == "GET")


def state(root: Path) -> dict[str, tuple[str, bytes | None, int]]:
    """Every entry under ``root`` (folders and links too): its kind, bytes and mtime."""
    found: dict[str, tuple[str, bytes | None, int]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            found[rel] = ("link", os.readlink(path).encode(), st.st_mtime_ns)
        elif path.is_dir():
            found[rel] = ("dir", None, st.st_mtime_ns)
        else:
            found[rel] = ("file", path.read_bytes(), st.st_mtime_ns)
    return found


def test_a_dry_run_says_what_would_be_fetched_skipped_and_resumed_and_changes_nothing(
    hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("dry")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    # config.json imported before; then an import without extra/ cut short by the source mid model.bin.
    assert run_cli("import", f"hf://{repo}", "config.json", "--to", str(dest)).returncode == 0
    hub.faults.drop_after["model.bin"] = [150 * KiB]
    cut = run_cli(
        "import", f"hf://{repo}", "--to", str(dest), "--exclude", "extra/", "--retries", "1", "--connections", "1"
    )
    assert cut.returncode == 1, cut.stderr
    before = state(tmp_path)
    hub.requests.clear()

    dry = run_cli("import", f"hf://{repo}", "--to", str(dest), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    actions = {f["path"]: (f["action"], f["fetch_bytes"]) for f in plan["files"]}
    kept = next(f["kept_bytes"] for f in plan["files"] if f["path"] == "model.bin")
    assert 0 < kept < 400 * KiB
    assert actions == {
        "config.json": ("skip", 0),
        "tokenizer.json": ("resume", 0),
        "extra/notes.txt": ("fetch", 5),
        "model.bin": ("resume", 400 * KiB - kept),
    }
    assert (plan["dry_run"], plan["destination"], plan["file_count"], plan["fetch_count"]) == (True, str(dest), 4, 2)
    assert plan["fetch_bytes"] == 5 + 400 * KiB - kept and plan["total_bytes"] == sum(
        len(v) if isinstance(v, bytes) else v for v in FILES.values()
    )

    text = run_cli("import", f"hf://{repo}", "--to", str(dest), "--dry-run")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0].startswith("[dry-run] would fetch 2 of 4 file(s)")
    assert any(line.split()[:2] == ["skip", "-"] and "config.json" in line for line in lines)
    assert any(line.split()[0] == "resume" and "model.bin" in line and "the rest is fetched" in line for line in lines)
    assert lines[-1] == "nothing was written (--dry-run)"

    assert fetched(hub) == [], "no file body requested"
    assert state(tmp_path) == before, "the destination is byte for byte as it was: no lock, no journal, nothing"

    # The import then does what the dry run said.
    done = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert done.returncode == 0, done.stderr
    assert fetched(hub) == ["extra/notes.txt", "model.bin"]
    assert json.loads(done.stdout)["fetched_bytes"] == plan["fetch_bytes"]


def test_a_dry_run_names_the_files_of_someone_else_the_import_would_replace(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("dry")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    (dest / "extra").mkdir(parents=True)
    (dest / "extra" / "notes.txt").write_bytes(b"my own notes")
    (dest / "mine.txt").write_bytes(b"not in the repository")
    dry = run_cli("import", f"hf://{repo}", "--to", str(dest), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["replaces"] == ["extra/notes.txt"]
    text = run_cli("import", f"hf://{repo}", "--to", str(dest), "--dry-run")
    assert "would replace 1 existing file(s) no earlier import wrote: extra/notes.txt" in text.stdout
    assert (dest / "extra" / "notes.txt").read_bytes() == b"my own notes"
    done = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["replaced"] == ["extra/notes.txt"]


def test_a_dry_run_into_a_new_destination_creates_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("dry")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "new" / "m"
    dry = run_cli("import", f"hf://{repo}", "--to", str(dest), "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert {f["action"] for f in json.loads(dry.stdout)["files"]} == {"fetch"}
    assert not (tmp_path / "new").exists()
    forced = run_cli("import", f"hf://{repo}", "--to", str(tmp_path), "--dry-run", "--force")
    assert forced.returncode == 0 and "would fetch 4 of 4" in forced.stdout
    assert list(tmp_path.iterdir()) == [] and fetched(hub) == []


async def test_a_dry_run_into_the_hf_cache_finds_what_huggingface_hub_downloaded(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("dry")
    hub.create_repo(repo, FILES)
    cache = tmp_path / "cache"
    snapshot_download(repo, cache_dir=cache, allow_patterns=["*.json"], endpoint=os.environ["HF_ENDPOINT"])
    before = state(tmp_path)
    hub.requests.clear()
    plan = await plan_import(f"hf://{repo}", HFCacheStorage(cache_dir=cache), registry=fast_registry())
    assert {f.path: f.action.value for f in plan.files} == {
        "config.json": "verify",
        "tokenizer.json": "verify",
        "extra/notes.txt": "fetch",
        "model.bin": "fetch",
    }
    assert plan.fetch_bytes == 5 + 400 * KiB
    assert fetched(hub) == [] and state(tmp_path) == before
