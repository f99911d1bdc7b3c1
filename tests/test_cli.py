"""The ``artifact-import`` command, run as a real subprocess against the local hub."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from artifact_import import MANIFEST_PATH

from .conftest import ROOT, files_under, repo_name, run_cli
from .hub import LocalHub

FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
    "model.safetensors": 2 * 1024 * 1024,
    "onnx/model.onnx": 64 * 1024,
}


def test_import_with_json_output(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    commit = hub.create_repo(repo, FILES)
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["ok"] is True and result["commit"] == commit
    assert result["file_count"] == 4 and result["total_bytes"] == sum(
        len(v) if isinstance(v, bytes) else v for v in FILES.values()
    )
    assert proc.stderr == "", "--json prints nothing else"
    stored = hub.repos[repo].commits[commit]
    on_disk = files_under(tmp_path / "m")
    manifest = json.loads(on_disk.pop(MANIFEST_PATH))
    assert manifest["commit"] == commit
    assert on_disk == {p: f.disk.read_bytes() for p, f in stored.items()}
    # Each file's entry (written one at a time) says what the manifest says, its checksum's data whole.
    assert sorted(result["files"], key=lambda f: f["path"]) == manifest["files"]
    for entry in result["files"]:
        assert entry["sha256"] == hashlib.sha256(on_disk[entry["path"]]).hexdigest()
        checksum = entry["verdicts"][0]
        assert checksum["verifier"] == "checksum" and checksum["ok"] is True
        assert checksum["data"] == {"sha256": entry["sha256"], "size": entry["size"]}


def test_an_import_asks_the_hub_for_the_repository_and_nothing_else(hub: LocalHub, tmp_path: Path) -> None:
    """With telemetry left on (as users run it), huggingface_hub's header helper fetches an "agent harnesses"
    registry from the endpoint, blocking for up to 3 s, and caches it in HF_HOME: an import must not."""
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    home = tmp_path / "hf-home"
    env = {"HF_HUB_DISABLE_TELEMETRY": "", "HF_HOME": str(home)}
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert hub.unknown_requests == []
    assert not home.exists() or not any(home.rglob("*")), "nothing written to the user's HF_HOME"


def test_plain_output_when_not_a_terminal(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path), "--include", "*.json", "--exclude", "tokenizer/*")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("verified [1/1] config.json")
    assert "\r" not in proc.stderr, "no progress-bar redraws in a log"
    assert proc.stdout.startswith("imported 1 file(s)") and "every file matched its published digest" in proc.stdout
    assert set(files_under(tmp_path)) == {"config.json", MANIFEST_PATH}


#: Runs the CLI (argv after the first argument), then writes the modules it loaded to the first argument.
_LOADED = """
import json, runpy, sys
out, sys.argv = sys.argv[1], ["artifact-import", *sys.argv[2:]]
try:
    runpy.run_module("artifact_import.cli", run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code
with open(out, "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def test_an_import_without_a_terminal_loads_only_what_it_uses(hub: LocalHub, tmp_path: Path) -> None:
    """Start-up is paid by every import (issue 26 counts CPU-seconds per GiB): huggingface_hub's auth module
    (httpx, filelock, yaml) when there is no token to find, tqdm when no bar is drawn, are not loaded."""
    repo = repo_name("cli")
    hub.create_repo(repo, {"config.json": b'{"hidden_size": 8}'})
    report = tmp_path / "loaded.json"
    home = tmp_path / "hf-home"

    def imported(repo: str, dest: Path) -> dict[str, Any]:
        """The import's exit code and every module it loaded, from a CLI run in a process of its own."""
        proc = subprocess.run(
            [sys.executable, "-c", _LOADED, str(report), "import", f"hf://{repo}", "--to", str(dest)],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "HF_HOME": str(home)},
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        loaded: dict[str, Any] = json.loads(report.read_text())
        assert loaded["code"] in (0, None), proc.stderr
        return loaded

    loaded = imported(repo, tmp_path / "m")
    assert (tmp_path / "m" / "config.json").read_bytes() == b'{"hidden_size": 8}'
    heavy = {"huggingface_hub.utils._auth", "huggingface_hub.errors", "httpx", "httpx2", "tqdm", "yaml", "filelock"}
    assert heavy & set(loaded["modules"]) == set()

    # With a saved login, huggingface_hub's get_token reads it, and the private repository is imported.
    private = repo_name("private")
    hub.create_repo(private, {"config.json": b"{}"}, token="hf_saved_login_token")
    home.mkdir(exist_ok=True)
    (home / "token").write_text("hf_saved_login_token\n")
    assert "huggingface_hub.utils._auth" in imported(private, tmp_path / "n")["modules"]
    assert (tmp_path / "n" / "config.json").read_bytes() == b"{}"


def test_dropped_connection_is_resumed_through_the_cli(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    commit = hub.create_repo(repo, FILES)
    hub.faults.drop_after["model.safetensors"] = [700_000]
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    ranges = [r[2] for r in hub.requests if r[1] == "model.safetensors"]
    assert ranges[0] is None and ranges[1] is not None and ranges[1] != "bytes=0-"
    expected = hub.repos[repo].commits[commit]["model.safetensors"].disk.read_bytes()
    assert (tmp_path / "model.safetensors").read_bytes() == expected


def test_corrupted_byte_exits_3_and_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    hub.faults.flip_byte["model.safetensors"] = 12345
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json")
    assert proc.returncode == 3
    out = json.loads(proc.stdout)
    assert out["ok"] is False and out["error"]["path"] == "model.safetensors"
    assert out["error"]["type"] == "IntegrityError"
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_retries_exhausted_exit_1_with_one_clear_line(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    hub.faults.errors["config.json"] = [(503, None)] * 10
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--retries", "2")
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: config.json: download failed after 2 attempts in a row (HTTP 503); "
        "the source may be down, try again later"
    ]
    assert "Traceback" not in proc.stderr
    # The files verified before the source gave up are kept aside, not under their names.
    assert proc.stderr.strip().endswith("was kept aside: run the same command again to finish.")
    assert all(p.startswith(".artifact-import/partial/") for p in files_under(tmp_path / "m"))


def test_source_errors_are_one_line_naming_repo_and_revision(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    hub.create_repo(f"{repo}-gated", FILES, gated=True)
    cases = {
        "hf://nobody/nothing": "error: hf://nobody/nothing@main: repository not found",
        f"hf://{repo}@v9": f"error: hf://{repo}@v9: revision 'v9' not found",
        f"hf://{repo}-gated": f"error: hf://{repo}-gated@main: ",
    }
    for source, expected in cases.items():
        proc = run_cli("import", source, "--to", str(tmp_path / "m"))
        assert proc.returncode == 1, (source, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), lines
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


def test_unsafe_listing_is_refused_naming_the_entries(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("cli")
    hub.create_repo(repo, {"ok.json": b"{}", "../../escape.sh": b"#!/bin/sh\n"})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 1
    assert "'../../escape.sh' (contains a '..' segment)" in proc.stderr
    assert not (tmp_path / "m").exists() and not (tmp_path.parent / "escape.sh").exists()


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run_cli("import", "not-a-uri", "--to", str(tmp_path)).returncode == 2
    assert run_cli("import", "hf://org/name").returncode == 2  # --to is required
    proc = run_cli("import", "gs://bucket/x", "--to", str(tmp_path))
    assert proc.returncode == 2 and "expected hf://ORG/NAME[@REVISION]" in proc.stderr


def test_help_and_version() -> None:
    top = run_cli("--help")
    assert top.returncode == 0 and "Exit codes" in top.stdout and "import" in top.stdout
    sub = run_cli("import", "--help")
    assert sub.returncode == 0 and "Examples:" in sub.stdout and "--include" in sub.stdout
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.startswith("artifact-import, version ")


def test_a_malformed_endpoint_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    for endpoint in ("", "ftp://hub.example", "http://user:pw@hub.example"):
        proc = run_cli("import", "hf://org/name", "--to", str(tmp_path / "m"), env={"HF_ENDPOINT": endpoint})
        assert proc.returncode == 2, (endpoint, proc.stderr)
        assert "Traceback" not in proc.stderr and "pw" not in proc.stderr
        assert proc.stderr.startswith("error: ")


def _interrupt_import(hub: LocalHub, dest: Path, *extra: str) -> tuple[str, str]:
    """Run `import` of a new repo with its big file trickling in; Ctrl-C once its first chunk is written.

    Return the repository and what the command said on stderr.
    """
    repo = repo_name("cli")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 256 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", "import", f"hf://{repo}", "--to", str(dest), *extra],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    # Bytes reach the file (in the partial folder until it commits) a chunk (1 MiB) at a time: wait for one.
    arriving = dest / ".artifact-import" / "partial" / "incomplete" / "model.safetensors"
    while not (arriving.exists() and arriving.stat().st_size):
        assert time.monotonic() < deadline and proc.poll() is None, "no bytes in flight"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err
    hub.faults.slow_bps = 0
    return repo, err


def test_ctrl_c_cancels_and_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    repo, err = _interrupt_import(hub, dest)
    assert err.strip().endswith(
        "interrupted: the import was cancelled; nothing half-written is visible. What was already received "
        "(3 verified file(s) and 1 file(s) received in part) was kept aside: run the same command again to finish."
    ), err
    # Nothing under the artifact's names, nothing half-written; the verified small files are kept where they
    # were received (the record says they are whole and verified).
    left = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file())
    assert left == [
        ".artifact-import/partial/incomplete/config.json",
        ".artifact-import/partial/incomplete/model.safetensors",
        ".artifact-import/partial/incomplete/onnx/model.onnx",
        ".artifact-import/partial/incomplete/tokenizer/tokenizer.json",
        ".artifact-import/partial/record.json",
    ]
    kept = (dest / ".artifact-import/partial/incomplete/model.safetensors").stat().st_size
    assert 0 < kept < 2 * 1024 * 1024

    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["resumed_count"] == 3
    # Only the rest of the big file is fetched, from the byte where it stopped.
    assert [(r[1], r[2]) for r in hub.requests if r[0] == "GET"] == [("model.safetensors", f"bytes={kept}-")]
    assert sorted(files_under(dest)) == [".artifact-import/manifest.json", *sorted(FILES)]


def test_ctrl_c_with_no_resume_leaves_nothing(hub: LocalHub, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    _, err = _interrupt_import(hub, dest, "--no-resume")
    assert err.strip().endswith("interrupted: the import was cancelled and nothing of it was left behind")
    assert not dest.exists()
