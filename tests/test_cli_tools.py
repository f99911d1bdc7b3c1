"""`artifact-import ls`, `verify` and `serve`, run as a user runs them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .conftest import ROOT, repo_name, run_cli
from .hub import LocalHub
from .ports import free_port
from .s3server import S3Server

FILES: dict[str, bytes | int] = {"config.json": b'{"a": 1}', "model.safetensors": 300_000, "sub/x.bin": 20_000}


def _env() -> dict[str, str]:
    return {"HF_ENDPOINT": os.environ["HF_ENDPOINT"]}


def test_ls_lists_files_sizes_and_total_without_fetching(hub: LocalHub) -> None:
    repo = repo_name("tools")
    commit = hub.create_repo(repo, FILES)
    done = run_cli("ls", f"hf://{repo}", "--exclude", "sub/", env=_env())
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["config.json", "8", "B"]
    assert lines[1].startswith("model.safetensors") and "293.0 KiB" in lines[1]
    assert lines[-1].startswith("2 file(s), 293.0 KiB in hf://") and commit[:12] in lines[-1]
    as_json = json.loads(run_cli("ls", f"hf://{repo}", "--json", env=_env()).stdout)
    assert as_json["commit"] == commit and as_json["file_count"] == 3
    assert as_json["total_bytes"] == 8 + 300_000 + 20_000
    assert [r for r in hub.requests if r[0] == "GET"] == [], "a dry run fetches no file"


def test_ls_of_a_missing_repository_is_one_line_and_exit_1(hub: LocalHub) -> None:
    done = run_cli("ls", "hf://test-org/nope-nope", env=_env())
    assert done.returncode == 1 and done.stderr.startswith("error: hf://test-org/nope-nope")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_verify_reports_intact_then_missing_changed_and_extra(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("tools")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    assert run_cli("import", f"hf://{repo}", "--to", str(dest), "-q", env=_env()).returncode == 0
    ok = run_cli("verify", str(dest))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("intact: 3 file(s)") and "sha256 and size" in ok.stdout

    (dest / "sub" / "x.bin").unlink()
    data = bytearray((dest / "model.safetensors").read_bytes())
    data[1000] ^= 0xFF  # same size, different bytes
    (dest / "model.safetensors").write_bytes(bytes(data))
    (dest / "stray.txt").write_text("not imported")
    bad = run_cli("verify", str(dest))
    assert bad.returncode == 3
    assert "missing: sub/x.bin" in bad.stdout
    assert "changed: model.safetensors (sha256 " in bad.stdout
    assert "extra:   stray.txt" in bad.stdout
    assert "NOT intact: 3 problem(s)" in bad.stderr
    quick = json.loads(run_cli("verify", str(dest), "--quick", "--json").stdout)
    assert quick["intact"] is False and quick["changed"] == [] and quick["missing"] == ["sub/x.bin"]

    # Importing again repairs it, fetching only what is missing or changed.
    hub.requests.clear()
    assert run_cli("import", f"hf://{repo}", "--to", str(dest), "-q", env=_env()).returncode == 0
    # The same-size change moved the file's stamp (mtime), so it was read again, found changed, fetched again.
    assert sorted(r[1] for r in hub.requests if r[0] == "GET") == ["model.safetensors", "sub/x.bin"]
    after = json.loads(run_cli("verify", str(dest), "--json").stdout)
    assert after["changed"] == [] and after["missing"] == []


def test_verify_without_a_manifest_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    done = run_cli("verify", str(tmp_path / "plain"))
    assert done.returncode == 2 and "no usable .artifact-import/manifest.json" in done.stderr


def test_verify_an_s3_destination(hub: LocalHub, s3: S3Server) -> None:
    repo = repo_name("tools")
    hub.create_repo(repo, FILES)
    bucket = s3.make_bucket()
    env = {**_env(), **s3.env()}
    assert run_cli("import", f"hf://{repo}", "--to", f"s3://{bucket}/m", "-q", env=env).returncode == 0
    ok = run_cli("verify", f"s3://{bucket}/m", "--json", env=env)
    assert json.loads(ok.stdout)["intact"] is True, ok.stderr
    s3.endpoint.client(max_connections=1).remove_object(bucket, "m/config.json")
    bad = run_cli("verify", f"s3://{bucket}/m", env=env)
    assert bad.returncode == 3 and "missing: config.json" in bad.stdout


def test_verbosity_flags_work_after_the_command_name(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("tools")
    hub.create_repo(repo, FILES)
    done = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "-v", env=_env())
    assert done.returncode == 0 and "INFO" in done.stderr
    quiet = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "n"), "-q", env=_env())
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_every_command_has_help_with_examples() -> None:
    for command in ("import", "ls", "verify", "serve"):
        done = run_cli(command, "--help")
        assert done.returncode == 0 and "Example" in done.stdout, command
    assert run_cli("--version").stdout.startswith("artifact-import, version")


def test_serve_runs_an_import_over_http_and_sigterm_shuts_down_cleanly(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("tools")
    hub.create_repo(repo, FILES)
    config = tmp_path / "proxy.toml"
    config.write_text(f'[storage.models]\nbackend = "vfs"\npath = "{tmp_path / "models"}"\n')
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", "--config", str(config), "serve", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **_env()},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/import", timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        body = json.dumps({"models": [{"repo_id": repo}], "storage_step_mappings": {"archive": "models"}})
        request = urllib.request.Request(f"{base}/import", body.encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.status == 202
            task_id = json.loads(resp.read())["task_id"]
        for _ in range(300):
            with urllib.request.urlopen(f"{base}/import/{task_id}", timeout=10) as resp:
                state = json.loads(resp.read())["state"]
            if state not in ("queued", "running"):
                break
            time.sleep(0.05)
        assert state == "succeeded"
        assert (tmp_path / "models" / "config.json").read_bytes() == b'{"a": 1}'
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "Unclosed" not in err, "sessions and connectors are closed on shutdown"


def test_starting_the_cli_imports_none_of_the_heavy_libraries() -> None:
    """``--version``, ``--help`` and every command's parsing stay fast: aiohttp, minio, huggingface_hub and the
    verifiers are imported by the commands that use them, not by loading the CLI."""
    probe = (
        "import sys, artifact_import.cli as cli\n"
        "from click.testing import CliRunner\n"
        "for args in (['--version'], ['import', '--help'], ['verify', '--help'], ['serve', '--help']):\n"
        "    assert CliRunner().invoke(cli.main, args).exit_code == 0, args\n"
        "heavy = ('aiohttp', 'minio', 'huggingface_hub', 'artifact_import.verifiers', 'artifact_import.pipeline')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_hub_import_into_a_directory_loads_no_s3_client(tmp_path: Path) -> None:
    """minio (with urllib3, pycryptodome and argon2 under it) is a fifth of the start-up of an import:
    only a source or destination that talks S3 loads it."""
    probe = (
        "import sys, artifact_import.cli, artifact_import.cli.locations as loc, artifact_import.config as cfg\n"
        "loc.open_source('hf://org/model', None)\n"
        f"loc.open_destination({str(tmp_path / 'dest')!r}, None)\n"
        "print('minio' in sys.modules, 'urllib3' in sys.modules)\n"
        "loc.open_destination('s3://bucket/prefix', None, {'AWS_ENDPOINT_URL': 'http://127.0.0.1:9'})\n"
        "print('minio' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "True"]


def test_a_hub_import_loads_neither_aiohttp_nor_huggingface_hubs_api_client(hub: LocalHub, tmp_path: Path) -> None:
    """Loading them was about 0.2 CPU-seconds of every import, a tenth of what a GiB costs: the hub's three calls
    go through our own client (``registries/wire.py``); huggingface_hub only builds the headers (its token)."""
    repo = repo_name("lean")
    hub.create_repo(repo, {"config.json": b"{}", "model.safetensors": 2 << 20})
    probe = (
        "import sys\n"
        "from artifact_import.cli import main\n"
        "try:\n"
        f"    main(['-q', 'import', 'hf://{repo}', '--to', {str(tmp_path / 'm')!r}], standalone_mode=False)\n"
        "finally:\n"
        "    print(sorted(m for m in ('aiohttp', 'huggingface_hub.hf_api', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={**os.environ}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "m" / "model.safetensors").stat().st_size == 2 << 20
