"""What a new user meets in the first hour: help texts, messages, the demo, what an interrupted import says."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from artifact_import.cli import main

from .conftest import ROOT, repo_name, run_cli
from .hub import LocalHub
from .terminal import run_in_terminal

COMMANDS = ([], ["import"], ["ls"], ["verify"], ["serve"])


@pytest.mark.parametrize("width", [40, 50, 60, 70, 80, 120])
def test_help_never_cuts_a_path_or_an_option_name_at_its_hyphen(width: int) -> None:
    """click rewraps help text at hyphens: ``DEST/.artifact-`` on one line, ``import/manifest.json`` on the next
    cannot be copied from the terminal."""
    for command in COMMANDS:
        shown = CliRunner().invoke(main, [*command, "--help"], terminal_width=width)
        assert shown.exit_code == 0, shown.output
        cut = [line for line in shown.output.splitlines() if re.search(r"\w-$", line)]
        assert cut == [], (command, width)
    shown = CliRunner().invoke(main, ["import", "--help"], terminal_width=width).output
    assert "DEST/.artifact-import/manifest.json" in shown
    assert "\u2011" not in shown, "what is shown is a plain hyphen"


def test_help_says_connections_are_for_the_whole_import_and_lists_every_exit_code() -> None:
    shown = CliRunner().invoke(main, ["import", "--help"], terminal_width=200).output
    connections = shown[shown.index("--connections") :].split("\n  --")[0]
    assert "one connection per file" not in connections
    assert "1: one connection for the whole import" in " ".join(connections.split())
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for code in ("0 ok", "1 import failed", "2 usage", "3 verification failed", "130 interrupted", "143", "129"):
        assert code in top
    assert "143 ended by SIGTERM" in top and "129 by SIGHUP" in top


FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer/tokenizer.json": b'{"vocab": {}}',
    "model.safetensors": 2 * 1024 * 1024,
}


def _interrupted_json_import(hub: LocalHub, dest: Path) -> tuple[str, subprocess.CompletedProcess[str]]:
    """An ``import --json`` ended by a real SIGINT while the large file's bytes arrive (the hub serves slowly)."""
    repo = repo_name("first-hour")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 256 * 1024
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", "import", f"hf://{repo}", "--to", str(dest), "--json"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    arriving = dest / ".artifact-import" / "partial" / "incomplete" / "model.safetensors"
    deadline = time.monotonic() + 30
    while not (arriving.exists() and arriving.stat().st_size):
        assert time.monotonic() < deadline and proc.poll() is None, "no bytes in flight"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    hub.faults.slow_bps = 0
    return repo, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_an_interrupted_json_import_says_on_stdout_what_it_kept(hub: LocalHub, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    repo, done = _interrupted_json_import(hub, dest)
    assert done.returncode == 130
    said = json.loads(done.stdout)
    assert said["ok"] is False and said["interrupted"] is True and said["signal"] == "SIGINT"
    assert said["exit_code"] == 130 and said["source"] == f"hf://{repo}" and said["destination"] == str(dest)
    assert said["kept"] == {"verified": ["config.json", "tokenizer/tokenizer.json"], "partial": ["model.safetensors"]}


def test_verify_after_an_interrupted_first_import_says_what_is_kept(hub: LocalHub, tmp_path: Path) -> None:
    dest = tmp_path / "m"
    repo, _ = _interrupted_json_import(hub, dest)
    commit = hub.repos[repo].refs["main"]
    shown = run_cli("verify", str(dest))
    assert shown.returncode == 3, shown.stderr
    assert "not a destination of artifact-import" not in shown.stderr
    assert (
        f"NOT intact: no import into {dest} has completed yet. An interrupted import of hf://{repo} (commit "
        f"{commit[:12]}) kept 2 verified file(s) and 1 received in part" in shown.stderr
    )
    finish = f"artifact-import import hf://{repo}@{commit} --to {dest}"
    assert finish in shown.stderr
    report = json.loads(run_cli("verify", str(dest), "--json").stdout)
    assert report["intact"] is False and report["committed"] is False
    assert report["parked"]["files"] == ["config.json", "tokenizer/tokenizer.json"]
    assert report["parked"]["incomplete"] == ["model.safetensors"]

    # The command it gives finishes the import.
    assert run_cli(*finish.split()[1:]).returncode == 0
    assert json.loads(run_cli("verify", str(dest), "--json").stdout)["intact"] is True


def test_verify_json_names_the_destination_as_given(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("first-hour")
    hub.create_repo(repo, {"config.json": b"{}"})
    given = str(tmp_path / "m1")
    imported = json.loads(run_cli("import", f"hf://{repo}", "--to", given, "--json").stdout)
    verified = json.loads(run_cli("verify", given, "--json").stdout)
    assert imported["destination"] == verified["destination"] == given


def _dead_clamd() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once the socket closes


def test_clamd_unreachable_says_how_to_go_without_it_where_it_was_set(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("first-hour")
    hub.create_repo(repo, {"config.json": b"{}"})
    address = _dead_clamd()
    by_env = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"), env={"ARTIFACT_IMPORT_CLAMD": address})
    assert by_env.returncode == 3
    assert f"cannot connect to clamd at {address}" in by_env.stderr
    assert "unset ARTIFACT_IMPORT_CLAMD (which gives the address) to import without a malware scan" in by_env.stderr
    assert "--clamd" not in by_env.stderr, "the user never typed --clamd"

    by_option = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--clamd", address)
    assert by_option.returncode == 3 and "start clamd, or import without --clamd" in by_option.stderr

    config = tmp_path / "scan.toml"
    config.write_text(f'[verify.clamav]\naddress = "{address}"\n')
    by_config = run_cli("--config", str(config), "import", f"hf://{repo}", "--to", str(tmp_path / "c"))
    assert by_config.returncode == 3
    assert f"remove address from [verify.clamav] in {config} to import without a malware scan" in by_config.stderr


def test_serve_needs_a_config_naming_where_imports_go(tmp_path: Path) -> None:
    """The README shows `--config FILE serve`: without one, every request would be refused, so it does not start."""
    alone = run_cli("serve", "--port", "1", env={"ARTIFACT_IMPORT_CONFIG": ""}, timeout=30)
    assert alone.returncode == 2
    assert "serve needs --config FILE (or ARTIFACT_IMPORT_CONFIG)" in alone.stderr
    empty = tmp_path / "empty.toml"
    empty.write_text("[server]\nmax-concurrent-imports = 1\n")
    nowhere = run_cli("--config", str(empty), "serve", "--port", "1", timeout=30)
    assert nowhere.returncode == 2
    assert f"{empty}: serve needs at least one [storage.NAME] or [volume.NAME]" in nowhere.stderr


def test_ctrl_c_on_a_terminal_leaves_one_overall_bar_and_no_file_bar(hub: LocalHub, tmp_path: Path) -> None:
    import pyte

    repo = repo_name("tty")
    hub.create_repo(repo, {"config.json": b"{}", "model.safetensors": 3 * 1024 * 1024, "w.bin": 3 * 1024 * 1024})
    hub.faults.slow_bps = 512 * 1024
    args = ["import", f"hf://{repo}", "--to", str(tmp_path / "m")]
    code, out = run_in_terminal(args, tmp_path, ctrl_c_after=b"w.bin:")
    assert code == 130, out
    screen = pyte.Screen(120, 40)
    pyte.ByteStream(screen).feed(out)
    shown = [line.rstrip() for line in screen.display if line.strip()]
    overall = [line for line in shown if re.match(r"\d+/3 files:", line)]
    assert len(overall) == 1, shown
    assert not any(line.startswith(("w.bin:", "model.safetensors:")) for line in shown), shown
    assert shown[-2].startswith("interrupted: the import was cancelled"), shown
    assert "^C" not in "\n".join(shown)


def test_the_demo_says_what_next_and_a_second_run_fetches_nothing(tmp_path: Path) -> None:
    out = tmp_path / "tiny-model"
    env = {**os.environ, "DEMO_OUTPUT": str(out)}
    first = subprocess.run(["scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("imported 6 file(s)")
    verify = f".venv/bin/artifact-import verify {out}"
    for hint in (verify, "./scripts/demo.sh", ".venv/bin/python -m tests.hub serve --demo", "HF_ENDPOINT="):
        assert hint in first.stderr, hint
    assert "  model.safetensors\n" in first.stderr
    # The command it gives works as given.
    checked = subprocess.run(verify.split(), cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0 and checked.stdout.startswith("intact: 6 file(s)"), checked.stderr

    again = subprocess.run(["scripts/demo.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to fetch: all 6 file(s) of hf://demo/tiny-model@main"), again.stdout


def test_the_hub_run_by_hand_says_it_needs_the_venv_and_how_to_point_the_command_at_it() -> None:
    # -S: no site-packages, as a system Python without the project's venv.
    outside = subprocess.run(
        [sys.executable, "-S", "-m", "tests.hub", "serve", "--demo"], cwd=ROOT, capture_output=True, text=True
    )
    assert outside.returncode == 1
    assert "the local hub needs the project's venv (aiohttp): ./scripts/setup.sh" in outside.stderr
    assert "Traceback" not in outside.stderr

    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.hub", "serve", "--demo"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = json.loads(proc.stdout.readline())["url"]
        said = proc.stderr.readline() + proc.stderr.readline()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert f"HF_ENDPOINT={url} .venv/bin/artifact-import import hf://demo/tiny-model --to ./tiny-model" in said


def test_setup_says_to_install_python3_venv_when_python_cannot_make_a_venv(tmp_path: Path) -> None:
    """Debian's Python without python3-venv: `-m venv` fails in terms of ensurepip, or leaves a venv without pip."""
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    (project / "scripts" / "setup.sh").write_bytes((ROOT / "scripts" / "setup.sh").read_bytes())
    (project / "scripts" / "setup.sh").chmod(0o755)
    (project / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    # A Python whose ensurepip is missing, as Debian's is until python3-venv is installed.
    stub = tmp_path / "no-ensurepip"
    stub.mkdir()
    (stub / "ensurepip.py").write_text("raise ImportError('No module named ensurepip')\n")
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(stub)}
    done = subprocess.run(["scripts/setup.sh"], cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "sudo apt-get install python3-venv" in done.stderr
    assert not (project / ".venv").exists()

    # A .venv such a Python left behind, without pip.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(project / ".venv")], check=True)
    done = subprocess.run(["scripts/setup.sh"], cwd=project, env={**os.environ, "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "rm -rf .venv; sudo apt-get install python3-venv" in done.stderr
