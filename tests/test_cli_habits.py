"""The CLI as Hugging Face users type it, and the messages it answers a mistake with (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifact_import.model import ArtifactStorageImportStep, FileState, ProgressEvent
from artifact_import.progress import LineProgress

from .conftest import ROOT, files_under, repo_name
from .hub import LocalHub
from .terminal import run_in_terminal

DOWNLOAD = ArtifactStorageImportStep.DOWNLOAD
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": 300_000,
    "README.md": b"# card\n",
}


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """The CLI in a fresh process, without the tester's own Hub token or offline switch."""
    base = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    return subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
        cwd=cwd,
    )


def stored(hub: LocalHub, key: str) -> dict[str, bytes]:
    repo = hub.repos[key]
    return {path: f.disk.read_bytes() for path, f in repo.commits[repo.refs["main"]].items()}


def imported(dest: Path) -> dict[str, bytes]:
    return {k: v for k, v in files_under(dest).items() if not k.startswith(".artifact-import/")}


# --- what Hugging Face users type ---------------------------------------------------------------


def test_a_repository_id_without_a_namespace_is_imported(hub: LocalHub, tmp_path: Path) -> None:
    name = repo_name("legacy").split("/")[1]  # "gpt2"-like: no ORG/
    hub.create_repo(name, FILES)
    done = cli("import", f"hf://{name}", "--to", str(tmp_path / "m"), "--json")
    assert done.returncode == 0, done.stderr
    assert imported(tmp_path / "m") == stored(hub, name)
    assert json.loads(done.stdout)["source"] == f"hf://{name}"


@pytest.mark.parametrize(
    ("uri_prefix", "option", "repo_type"),
    [
        ("datasets/", (), "dataset"),
        ("", ("--repo-type", "dataset"), "dataset"),
        ("spaces/", (), "space"),
        ("", ("--repo-type", "space"), "space"),
    ],
)
def test_datasets_and_spaces_are_imported_by_uri_or_repo_type(
    hub: LocalHub, tmp_path: Path, uri_prefix: str, option: tuple[str, ...], repo_type: str
) -> None:
    repo = repo_name(repo_type)
    hub.create_repo(repo, FILES, repo_type=repo_type)
    key = f"{repo_type}s/{repo}"
    done = cli("import", f"hf://{uri_prefix}{repo}", *option, "--to", str(tmp_path / "d"), "--json")
    assert done.returncode == 0, done.stderr
    assert imported(tmp_path / "d") == stored(hub, key)
    manifest = json.loads((tmp_path / "d" / ".artifact-import" / "manifest.json").read_text())
    assert manifest["source"] == f"hf://{repo_type}s/{repo}"
    listed = cli("ls", f"hf://{uri_prefix}{repo}", *option, "--json")
    assert listed.returncode == 0, listed.stderr
    assert sorted(f["path"] for f in json.loads(listed.stdout)["files"]) == sorted(FILES)
    # The same id as a model does not exist: the kind is not guessed.
    missing = cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert missing.returncode == 1 and "repository not found" in missing.stderr


def test_a_repository_type_that_contradicts_the_uri_is_a_usage_error(hub: LocalHub, tmp_path: Path) -> None:
    done = cli("import", "hf://datasets/org/name", "--repo-type", "model", "--to", str(tmp_path / "d"))
    assert done.returncode == 2
    assert "names a dataset repository, but the repository type given is model" in done.stderr
    s3 = cli("import", "s3://bucket/prefix", "--repo-type", "dataset", "--to", str(tmp_path / "d"))
    assert s3.returncode == 2 and "--repo-type applies to hf:// sources" in s3.stderr


def test_file_names_after_the_source_select_exactly_those_files(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("pick")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    done = cli("import", f"hf://{repo}", "config.json", "README.md", "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert imported(dest) == {p: b for p, b in stored(hub, repo).items() if p in ("config.json", "README.md")}
    hub.requests.clear()
    missing = cli("import", f"hf://{repo}", "config.json", "nope.bin", "--to", str(tmp_path / "n"))
    assert missing.returncode == 1
    assert f"hf://{repo}@main: not in the source: nope.bin" in missing.stderr
    assert f"artifact-import ls hf://{repo}@main" in missing.stderr
    assert hub.requests == [] and not (tmp_path / "n").exists(), "nothing fetched, nothing created"


def test_offline_mode_is_said_at_once_without_contacting_the_hub(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("off")
    hub.create_repo(repo, FILES)
    hub.faults.stall_listing = True  # a listing call would hang until the timeout below
    done = cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), env={"HF_HUB_OFFLINE": "1"}, timeout=30)
    assert done.returncode == 2
    assert "offline mode is on (HF_HUB_OFFLINE is set)" in done.stderr and "unset HF_HUB_OFFLINE" in done.stderr


def test_hf_hub_etag_timeout_bounds_each_listing_call(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("etag")
    hub.create_repo(repo, FILES)
    hub.faults.stall_listing = True
    done = cli(
        "import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--retries", "2",
        env={"HF_HUB_ETAG_TIMEOUT": "1"}, timeout=30,
    )  # fmt: skip
    assert done.returncode == 1
    assert "no answer within 1s, 2 attempts" in done.stderr


def test_hf_hub_download_timeout_is_the_stall_timeout(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("stall")
    hub.create_repo(repo, FILES)
    hub.faults.stall_after = {"model.safetensors": [1000]}
    hub.faults.stall_seconds = 300.0
    # With the default stall timeout (30 s) this would outlive the 20 s the test waits.
    done = cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), env={"HF_HUB_DOWNLOAD_TIMEOUT": "1"}, timeout=20)
    assert done.returncode == 0, done.stderr
    gets = [r for m, p, r in hub.requests if m == "GET" and p == "model.safetensors"]
    assert gets[0] is None and gets[1] is not None and gets[1].startswith("bytes=1000-"), gets


@pytest.mark.parametrize("command", ["import", "ls"])
@pytest.mark.parametrize("value", ["soon", "0", "-3", "0.5"])
def test_a_malformed_hf_timeout_variable_is_a_usage_error(tmp_path: Path, value: str, command: str) -> None:
    """huggingface_hub itself dies with a traceback on these; we say what is wrong."""
    where = ("--to", str(tmp_path / "m")) if command == "import" else ()
    done = cli(command, "hf://org/name", *where, env={"HF_HUB_ETAG_TIMEOUT": value})
    assert done.returncode == 2, done.stderr
    assert f"HF_HUB_ETAG_TIMEOUT={value!r}: expected a whole number of seconds" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_token_saved_in_hf_home_is_used(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("private")
    hub.create_repo(repo, FILES, token="hf_saved_login_token")
    home = tmp_path / "hf-home"
    home.mkdir()
    denied = cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"), env={"HF_HOME": str(home)})
    assert denied.returncode == 1 and "repository not found" in denied.stderr
    (home / "token").write_text("hf_saved_login_token\n")  # what `hf auth login` writes
    done = cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), env={"HF_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert imported(tmp_path / "b") == stored(hub, repo)


def test_hf_hub_disable_implicit_token_keeps_the_saved_token_at_home(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("public")
    hub.create_repo(repo, FILES)
    home = tmp_path / "hf-home"
    home.mkdir()
    (home / "token").write_text("hf_saved_login_token\n")
    hub.authorized.clear()
    env = {"HF_HOME": str(home), "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1"}
    done = cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), env=env)
    assert done.returncode == 0, done.stderr
    assert hub.authorized == [], "the saved login was not sent"


def test_max_workers_is_the_file_concurrency(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("workers")
    hub.create_repo(repo, FILES)
    done = cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--max-workers", "1")
    assert done.returncode == 0, done.stderr
    assert imported(tmp_path / "m") == stored(hub, repo)
    bad = cli("import", f"hf://{repo}", "--to", str(tmp_path / "n"), "--max-workers", "0")
    assert bad.returncode == 2 and "--max-workers" in bad.stderr


# --- messages that tell the truth ---------------------------------------------------------------


def test_an_empty_destination_is_refused_not_taken_as_the_current_directory(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("empty")
    hub.create_repo(repo, FILES)
    done = cli("import", f"hf://{repo}", "--to", "", cwd=tmp_path)
    assert done.returncode == 2
    assert "the destination is empty" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("below", [False, True])
def test_a_destination_that_is_a_file_is_refused_before_the_hub_is_contacted(
    hub: LocalHub, tmp_path: Path, below: bool
) -> None:
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"not a directory")
    hub.faults.stall_listing = True  # contacting the hub would hang
    dest = afile / "sub" if below else afile
    done = cli("import", "hf://org/name", "--to", str(dest), timeout=30)
    assert done.returncode == 2, done.stderr
    expected = "cannot be created" if below else "is a file, not a directory"
    assert expected in done.stderr and "report it" not in done.stderr
    assert afile.read_bytes() == b"not a directory"


def test_unknown_storage_and_volume_names_are_configuration_errors(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[storage.models]\nbackend = "vfs"\npath = "{tmp_path / "models"}"\n')
    storage = cli("--config", str(config), "import", "hf://org/name", "--to", "storage:nope/x")
    assert storage.returncode == 2
    assert "no storage named 'nope' (configured: models)" in storage.stderr
    volume = cli("--config", str(config), "import", "hf://org/name", "--to", "vfolder:nope/user-1/" + "a" * 32)
    assert volume.returncode == 2 and "no volume named 'nope'" in volume.stderr


def test_quarantine_without_a_malware_scan_is_refused(tmp_path: Path) -> None:
    done = cli("import", "hf://org/name", "--to", str(tmp_path / "m"), "--quarantine", str(tmp_path / "q"))
    assert done.returncode == 2
    assert "--quarantine keeps the files the malware scan flags, but no scan is configured" in done.stderr
    assert not (tmp_path / "q").exists() and not (tmp_path / "m").exists()


def test_verify_says_what_repairs_each_kind_of_problem(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("repair")
    commit = hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    assert cli("import", f"hf://{repo}", "--to", str(dest)).returncode == 0
    (dest / "config.json").unlink()
    (dest / "README.md").write_bytes(b"# edited\n")
    (dest / "notes.txt").write_text("mine")
    report = cli("verify", str(dest))
    assert report.returncode == 3
    again = f"artifact-import import hf://{repo}@{commit} --to {dest}"
    assert f"to restore the 1 missing file(s) (only they are fetched): {again}\n" in report.stderr
    assert f"to replace the 1 changed file(s): {again} --force" in report.stderr
    assert "the 1 extra file(s) were not written by the import: remove them" in report.stderr
    # The hints work: the plain import restores the missing file, --force the changed one.
    assert cli(*again.split()[1:], "--force").returncode == 0
    (dest / "notes.txt").unlink()
    assert cli("verify", str(dest)).returncode == 0


def test_json_names_the_destination_as_given(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("json")
    hub.create_repo(repo, FILES)
    done = cli("import", f"hf://{repo}", "--to", "m2", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["destination"] == "m2"
    assert result["fetched_bytes"] == sum(len(b) for b in stored(hub, repo).values())


def test_without_a_terminal_progress_lines_come_at_a_steady_interval() -> None:
    lines: list[str] = []

    class Sink:
        def write(self, text: str) -> None:
            lines.extend(t for t in text.splitlines() if t)

        def flush(self) -> None:
            pass

    progress = LineProgress(Sink(), interval=0.0)  # type: ignore[arg-type]
    progress(ProgressEvent("shard.safetensors", FileState.QUEUED, None, 0, 30 << 30))
    progress(ProgressEvent("shard.safetensors", FileState.RUNNING, DOWNLOAD, 3 << 30, 30 << 30))
    assert len(lines) == 1
    assert lines[0].startswith("progress: 3.0 GiB of 30.0 GiB (10%), ") and lines[0].endswith("; 0/1 files done")
    assert " left;" in lines[0]
    quiet = LineProgress(Sink(), interval=3600)  # type: ignore[arg-type]
    quiet(ProgressEvent("shard.safetensors", FileState.QUEUED, None, 0, 30 << 30))
    quiet(ProgressEvent("shard.safetensors", FileState.RUNNING, DOWNLOAD, 1 << 30, 30 << 30))
    assert len(lines) == 1, "not before the interval"


# --- a clean terminal ---------------------------------------------------------------------------


def _run_in_a_terminal(args: list[str], cwd: Path, *, sized: bool) -> tuple[int, str]:
    code, out = run_in_terminal(args, cwd, sized=sized)
    return code, out.decode(errors="replace")


@pytest.mark.parametrize("sized", [True, False])
def test_log_lines_are_written_above_the_bars_never_into_them(hub: LocalHub, tmp_path: Path, sized: bool) -> None:
    import re

    repo = repo_name("tty")
    hub.create_repo(repo, {**FILES, "model.safetensors": 3 * 1024 * 1024})
    hub.faults.slow_bps = 1024 * 1024  # ~3 s: the bars are drawn many times
    hub.faults.drop_after = {"model.safetensors": [1024 * 1024]}  # a retry, logged at -v while the bars show
    code, out = _run_in_a_terminal(["import", f"hf://{repo}", "--to", str(tmp_path / "m"), "-v"], tmp_path, sized=sized)
    assert code == 0, out
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)  # cursor movements between redraws
    segments = [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]
    logged = [s for s in segments if "retrying in" in s]
    assert logged, "the retry was logged"
    assert all(s.startswith("INFO artifact_import") for s in logged), logged
    bars = [s for s in segments if "files" in s and "%|" in s]
    assert bars and re.search(r"\b\d/3 files\b", bars[-1]), bars[-3:]
    # One kind of unit: sizes and rates in KiB/MiB, never tqdm's "MB" next to MiB counts.
    assert any("MiB/s" in s for s in bars) and not any(re.search(r"\d(MB|kB)", s) for s in bars)
    assert segments[-1].startswith("imported 3 file(s)"), segments[-3:]
    assert not any("HTTP Request" in s for s in segments), "the HTTP library's own request log stays out of -v"


def test_the_demo_hub_removes_what_it_generated_when_stopped(tmp_path: Path) -> None:
    """`scripts/demo.sh` stops its hub with SIGTERM; nothing of it stays in the temporary directory."""
    import signal

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hub", "serve", "--demo"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.stdout is not None
    assert "url" in json.loads(proc.stdout.readline())
    assert [p.name[:10] for p in tmp_path.iterdir()] == ["local-hub-"]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert list(tmp_path.iterdir()) == []


def test_an_error_is_the_last_thing_on_the_terminal_no_bar_redrawn_after_it(hub: LocalHub, tmp_path: Path) -> None:
    import re

    repo = repo_name("ttyerr")
    hub.create_repo(repo, {**FILES, "model.safetensors": 2 * 1024 * 1024})
    hub.faults.slow_bps = 1024 * 1024
    hub.faults.flip_byte = {"model.safetensors": 1_500_000}  # the checksum fails at the end of the file
    code, out = _run_in_a_terminal(["import", f"hf://{repo}", "--to", str(tmp_path / "m")], tmp_path, sized=True)
    assert code == 3, out
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", out)
    segments = [s.strip() for s in re.split(r"[\r\n]", text) if s.strip()]
    assert segments[-1].startswith("error: model.safetensors: verification failed"), segments[-4:]


def test_the_s3_client_library_does_not_print_its_own_retries(tmp_path: Path) -> None:
    """urllib3 (under minio) logs a WARNING with the URL for each retry; the user gets one error of ours."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
    done = cli("import", "s3://bucket/models", "--to", str(tmp_path / "m"), env=env)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and "cannot reach" in done.stderr
    assert "urllib3" not in done.stderr and "Retrying" not in done.stderr
