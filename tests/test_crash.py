"""Whatever ends the process, the next run of the same command finishes the import, and nothing is left behind.

The real CLI runs as a child process against the local hub, serving slowly;
it is ended with real signals (SIGKILL, SIGTERM, SIGHUP, Ctrl-C twice), then
the same command runs again at full speed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifact_import import MANIFEST_PATH, HuggingFaceRegistry, RetryPolicy, SourceError, import_artifact
from artifact_import.registries.http import HttpTimeouts

from .conftest import ROOT, files_under, repo_name, run_cli, start_import, wait_until
from .hub import LocalHub
from .s3server import S3Server

MiB = 1 << 20
FILES: dict[str, bytes | int] = {
    "config.json": b'{"hidden_size": 8}',
    "tokenizer.json": b'{"vocab": {}}',
    "model.safetensors": 4 * MiB,
}
JOURNAL = Path(".artifact-import") / "partial" / "incomplete"


def _receiving(dest: Path, at_least: int = MiB) -> bool:
    part = dest / JOURNAL / "model.safetensors"
    return part.exists() and part.stat().st_size >= at_least


def _import_under_way(hub: LocalHub, tmp_path: Path) -> tuple[str, Path, subprocess.Popen[str]]:
    """The CLI importing a new repo slowly, its big file half received."""
    repo = repo_name("crash")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 512 * 1024
    dest = tmp_path / "m"
    proc = start_import(repo, dest)
    wait_until(lambda: _receiving(dest), proc, "bytes of the big file")
    return repo, dest, proc


def _expected(hub: LocalHub, repo: str) -> dict[str, bytes]:
    commit = hub.repos[repo].refs["main"]
    return {path: f.disk.read_bytes() for path, f in hub.repos[repo].commits[commit].items()}


def _rerun_finishes(hub: LocalHub, repo: str, dest: Path) -> None:
    """The same command again: exit 0, the artifact exactly, its manifest, nothing else; resumed with Range."""
    hub.faults.slow_bps = 0
    hub.requests.clear()
    proc = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert proc.returncode == 0, proc.stderr
    on_disk = files_under(dest)
    manifest = json.loads(on_disk.pop(MANIFEST_PATH))
    assert on_disk == _expected(hub, repo), "exactly the artifact: no part file, no parked file, no record"
    assert manifest["commit"] == hub.repos[repo].refs["main"]
    ranges = [r for m, p, r in hub.requests if m == "GET" and p == "model.safetensors"]
    assert len(ranges) == 1 and ranges[0] is not None and int(ranges[0].split("=")[1].rstrip("-")) >= MiB, (
        f"the big file went on from what was received, not from byte 0: {ranges}"
    )
    assert run_cli("verify", str(dest)).returncode == 0


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_ended_by_a_signal_mid_file_the_next_run_finishes_from_where_it_stopped(
    signum: int, hub: LocalHub, tmp_path: Path
) -> None:
    repo, dest, proc = _import_under_way(hub, tmp_path)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    if signum == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        # Handled like Ctrl-C: the shell's 128 + signal number, and the same message.
        assert proc.returncode == 128 + signum, err
        assert "interrupted: the import was cancelled" in err and "Traceback" not in err
    assert not (dest / "model.safetensors").exists() and not (dest / "config.json").exists(), "nothing visible"
    _rerun_finishes(hub, repo, dest)


def test_ctrl_c_twice_stops_at_once_and_the_next_run_finishes(hub: LocalHub, tmp_path: Path) -> None:
    repo, dest, proc = _import_under_way(hub, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "was never retrieved" not in err and "destroyed but it is pending" not in err
    assert "nothing of it was left behind" not in err, "a false message"
    assert not (dest / "model.safetensors").exists()
    _rerun_finishes(hub, repo, dest)


def test_a_second_import_into_the_same_destination_waits_for_the_first(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("lock")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 2 * MiB
    dest = tmp_path / "m"
    first = start_import(repo, dest)
    wait_until(lambda: _receiving(dest, 1), first, "the first import writing")
    second = start_import(repo, dest, "--json")
    wait_until(lambda: "waiting for the import in progress" in _peek(second), second, "the waiting line")
    _, err_first = first.communicate(timeout=60)
    out_second, err_second = second.communicate(timeout=60)
    assert first.returncode == 0, err_first
    assert second.returncode == 0, err_second
    result = json.loads(out_second)
    assert result["skipped_count"] == len(FILES), "the second found everything imported, and fetched nothing"
    assert run_cli("verify", str(dest)).returncode == 0


def test_a_bounded_wait_for_the_lock_fails_clearly(hub: LocalHub, tmp_path: Path) -> None:
    repo, other = repo_name("lock"), repo_name("lock")
    hub.create_repo(repo, FILES)
    hub.create_repo(other, {"README.md": b"another repository"})
    hub.faults.slow_bps = 512 * 1024
    dest = tmp_path / "m"
    first = start_import(repo, dest)
    try:
        wait_until(lambda: _receiving(dest, 1), first, "the first import writing")
        second = run_cli("import", f"hf://{other}", "--to", str(dest), "--lock-timeout", "0.5")
        assert second.returncode == 1
        assert "another import into this destination is still running" in second.stderr
    finally:
        first.kill()
        first.communicate()
    assert not (dest / "README.md").exists(), "the second import wrote nothing"


def test_part_files_a_killed_import_left_in_the_old_layout_are_removed(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("crash")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    (dest / "sub").mkdir(parents=True)
    for name in (
        ".model.safetensors.0123456789ab.artifact-import-part",
        "sub/.x.bin.ba9876543210.artifact-import-part",
    ):
        (dest / name).write_bytes(os.urandom(1000))
    proc = run_cli("import", f"hf://{repo}", "--to", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert sorted(files_under(dest)) == sorted([MANIFEST_PATH, *FILES])


_seen: dict[int, str] = {}


def _peek(proc: subprocess.Popen[str]) -> str:
    """What ``proc`` has written to stderr so far (without waiting for it to end)."""
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    try:
        chunk = proc.stderr.read()
    except (BlockingIOError, TypeError):
        chunk = None
    _seen[proc.pid] = _seen.get(proc.pid, "") + (chunk or "")
    return _seen[proc.pid]


async def test_a_stalled_listing_is_retried_then_fails_clearly(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("stall")
    hub.create_repo(repo, FILES)
    hub.faults.stall_listing = True
    retry = RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05)
    registry = HuggingFaceRegistry(retry=retry, timeouts=HttpTimeouts(listing=0.5))
    try:
        with pytest.raises(SourceError, match=r"no answer within 0\.5s, 2 attempts"):
            await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
    finally:
        hub.faults.stall_listing = False
        await registry.aclose()
    assert not (tmp_path / "m").exists()


def test_ctrl_c_ends_an_import_stuck_in_a_stalled_listing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("stall")
    hub.create_repo(repo, FILES)
    hub.faults.stall_listing = True
    try:
        proc = start_import(repo, tmp_path / "m")
        time.sleep(1.5)  # well into the listing call
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=15)
    finally:
        hub.faults.stall_listing = False
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err


@pytest.mark.parametrize("then", ["import", "verify"])
def test_killed_during_the_commit_the_next_run_completes_it(then: str, hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("commit")
    files: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(1500)}
    hub.create_repo(repo, files)
    dest = tmp_path / "m"
    proc = start_import(repo, dest, "-q")
    intent = dest / ".artifact-import" / "commit.json"
    wait_until(intent.exists, proc, "the commit", timeout=120)
    proc.kill()
    proc.communicate()
    visible = [p for p in (dest / "shard").glob("*.json")] if (dest / "shard").exists() else []
    assert intent.exists() and len(visible) < len(files), "killed inside the commit window"
    assert not (dest / MANIFEST_PATH).exists()
    if then == "verify":
        # verify completes the recorded commit, then finds the destination intact.
        checked = run_cli("verify", str(dest))
        assert checked.returncode == 0, checked.stdout + checked.stderr
    else:
        hub.requests.clear()
        again = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
        assert again.returncode == 0, again.stderr
        assert [r for r in hub.requests if r[0] == "GET"] == [], "everything was verified before: nothing fetched"
        assert run_cli("verify", str(dest)).returncode == 0
    on_disk = files_under(dest)
    on_disk.pop(MANIFEST_PATH)
    assert on_disk == _expected(hub, repo)


def test_sigterm_during_the_commit_exits_at_once_and_the_next_run_completes_it(hub: LocalHub, tmp_path: Path) -> None:
    """A container runtime's SIGTERM in the commit window: no undoing or finishing thousands of renames before
    exiting (Docker waits 10 s, Kubernetes 30 s): the recorded commit is left for the next run to complete."""
    repo = repo_name("commit")
    files: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(1500)}
    hub.create_repo(repo, files)
    dest = tmp_path / "m"
    proc = start_import(repo, dest, "-q")
    intent = dest / ".artifact-import" / "commit.json"
    wait_until(intent.exists, proc, "the commit", timeout=120)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert time.monotonic() - signalled < 10, "stopped within a container's grace period"
    assert "Traceback" not in err
    assert intent.exists(), "the recorded commit is left as it is, not undone file by file"
    hub.requests.clear()
    again = run_cli("import", f"hf://{repo}", "--to", str(dest), "--json")
    assert again.returncode == 0, again.stderr
    assert [r for r in hub.requests if r[0] == "GET"] == [], "everything was verified before: nothing fetched"
    on_disk = files_under(dest)
    on_disk.pop(MANIFEST_PATH)
    assert on_disk == _expected(hub, repo)
    assert run_cli("verify", str(dest)).returncode == 0


#: The CLI with the bound of a journal file read whole lowered (argv[1], bytes), as 200,000 files are to it.
_BOUNDED_CLI = (
    "import sys\n"
    "from artifact_import.journal import jsonfile\n"
    "jsonfile.MAX_JSON_BYTES = int(sys.argv.pop(1))\n"
    "from artifact_import.cli.command import main\n"
    "main(prog_name='artifact-import')\n"
)


def test_sigterm_during_the_commit_of_a_journal_too_large_to_read_whole_the_next_run_fetches_nothing(
    hub: LocalHub, tmp_path: Path
) -> None:
    """At 200,000 files the manifest (150 MB) passed the bound of a journal file read whole (64 MiB): the run
    after a SIGTERM in the commit completed it, then found the manifest unusable and fetched every file again.
    At some 700,000 files the commit's intent would pass it too, and be ignored. Both processes here run with
    the bound below the manifest's and the intent's sizes, as a repository of very many files is to it."""
    repo = repo_name("commit")
    files: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(1500)}
    hub.create_repo(repo, files)
    dest = tmp_path / "m"
    bound = str(16 << 10)
    command = [sys.executable, "-c", _BOUNDED_CLI, bound, "import", f"hf://{repo}", "--to", str(dest)]
    proc = subprocess.Popen(
        [*command, "-q"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    intent = dest / ".artifact-import" / "commit.json"
    wait_until(intent.exists, proc, "the commit", timeout=120)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert intent.exists() and intent.stat().st_size > int(bound), "the recorded commit is larger than the bound"
    hub.requests.clear()
    again = subprocess.run([*command, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert (dest / MANIFEST_PATH).stat().st_size > int(bound)
    assert [r for r in hub.requests if r[0] == "GET"] == [], "everything was verified before: nothing fetched"
    assert json.loads(again.stdout)["skipped_count"] == len(files)
    assert not intent.exists() and not (dest / ".artifact-import" / "partial").exists()
    on_disk = files_under(dest)
    on_disk.pop(MANIFEST_PATH)
    assert on_disk == _expected(hub, repo)


def test_killed_mid_multipart_upload_the_next_run_leaves_no_incomplete_upload(
    hub: LocalHub, s3: S3Server, tmp_path: Path
) -> None:
    repo = repo_name("crash-s3")
    hub.create_repo(repo, {"config.json": b"{}", "model.safetensors": 24 * MiB})
    hub.faults.slow_bps = 4 * MiB
    bucket = s3.make_bucket()
    client = s3.endpoint.client(max_connections=1)

    def uploads() -> list[str]:
        return [str(u.object_name) for u in client._list_multipart_uploads(bucket).uploads]

    def objects() -> list[str]:
        return sorted(str(o.object_name) for o in client.list_objects(bucket, recursive=True))

    proc = start_import(repo, f"s3://{bucket}/m", env=s3.env())
    wait_until(lambda: uploads() and any("/uploads/" in o for o in objects()), proc, "a recorded multipart upload")
    proc.kill()
    proc.communicate()
    assert uploads() == ["m/model.safetensors"], "the killed import left its upload open"
    hub.faults.slow_bps = 0
    again = run_cli("import", f"hf://{repo}", "--to", f"s3://{bucket}/m", env=s3.env())
    assert again.returncode == 0, again.stderr
    assert uploads() == [], "the next successful import aborted the upload the killed one had recorded"
    assert objects() == ["m/.artifact-import/manifest.json", "m/config.json", "m/model.safetensors"]


@pytest.mark.parametrize("then", ["import", "verify"])
def test_killed_during_a_commit_to_object_storage_the_next_run_completes_it(
    then: str, hub: LocalHub, s3: S3Server
) -> None:
    repo = repo_name("commit-s3")
    files: dict[str, bytes | int] = {f"shard/{i:04d}.json": b'{"i": %d}' % i for i in range(1500)}
    files["model.safetensors"] = 12 * MiB  # one multipart upload, completed from its record
    hub.create_repo(repo, files)
    bucket = s3.make_bucket()
    client = s3.endpoint.client(max_connections=1)
    dest = f"s3://{bucket}/m"

    def committing() -> bool:
        try:
            client.stat_object(bucket, "m/.artifact-import/commit.json")
        except Exception:
            return False
        return True

    proc = start_import(repo, dest, "-q", env=s3.env())
    wait_until(committing, proc, "the commit", timeout=180)
    proc.kill()
    proc.communicate()
    visible = [o for o in client.list_objects(bucket, "m/shard/", recursive=True)]
    assert committing() and len(visible) < 1500, "killed inside the commit window"
    if then == "verify":
        checked = run_cli("verify", dest, env=s3.env())
        assert checked.returncode == 0, checked.stdout + checked.stderr
    else:
        hub.requests.clear()
        again = run_cli("import", f"hf://{repo}", "--to", dest, "--json", env=s3.env())
        assert again.returncode == 0, again.stderr
        assert [r for r in hub.requests if r[0] == "GET"] == [], "everything was verified before: nothing fetched"
        assert run_cli("verify", dest, env=s3.env()).returncode == 0
    objects = {str(o.object_name) for o in client.list_objects(bucket, recursive=True)}
    assert objects == {"m/.artifact-import/manifest.json", *(f"m/{p}" for p in files)}
    assert client._list_multipart_uploads(bucket).uploads == []
    for path, data in _expected(hub, repo).items():
        assert client.get_object(bucket, f"m/{path}").read() == data


def test_verify_says_what_interrupted_imports_left_and_removes_their_part_files(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("leftover")
    hub.create_repo(repo, FILES)
    dest = tmp_path / "m"
    assert run_cli("import", f"hf://{repo}", "--to", str(dest)).returncode == 0
    newer = hub.commit(repo, {**FILES, "model.safetensors": 6 * MiB})
    hub.faults.slow_bps = 512 * 1024
    proc = start_import(repo, dest)
    wait_until(lambda: _receiving(dest), proc, "bytes of the new revision")
    proc.kill()
    proc.communicate()
    (dest / ".model.safetensors.0123456789ab.artifact-import-part").write_bytes(b"x" * 1000)  # an older version's
    checked = run_cli("verify", str(dest), "--json")
    assert checked.returncode == 0, "the revision the manifest vouches for is intact: what waits aside is not it"
    report = json.loads(checked.stdout)
    assert report["removed_leftovers"] == [".model.safetensors.0123456789ab.artifact-import-part"]
    assert report["parked"]["commit"] == newer and "model.safetensors" in report["parked"]["incomplete"]
    said = run_cli("verify", str(dest)).stderr
    assert "to resume, of" in said and newer[:12] in said and "importing that revision again finishes" in said
    assert not (dest / ".model.safetensors.0123456789ab.artifact-import-part").exists()


def test_killed_at_any_moment_the_next_run_finishes(hub: LocalHub, tmp_path: Path, pytestconfig: pytest.Config) -> None:
    """kill -9 at evenly spaced moments, from start-up and listing through the files to the commit
    (``--crash-points N`` for more); each time the same command then finishes the import."""
    repo = repo_name("points")
    files: dict[str, bytes | int] = {
        "config.json": b'{"hidden_size": 8}',
        **{f"model-{i}-of-3.safetensors": 2 * MiB for i in range(1, 4)},
        **{f"tokenizer/{i}.txt": b"merges %d" % i for i in range(20)},
    }
    hub.create_repo(repo, files)
    rate = 512 * 1024  # per connection; the three shards arrive side by side
    points = pytestconfig.getoption("--crash-points")
    # Start-up and listing take about a second; then a shard's bytes; then the commit.
    span = 1.0 + 2 * MiB / rate
    for k in range(points):
        moment = span * k / max(points - 1, 1) * 0.95 + 0.05
        dest = tmp_path / f"m{k}"
        hub.faults.slow_bps = rate
        proc = start_import(repo, dest)
        time.sleep(moment)
        proc.kill()
        proc.communicate()
        journal = dest / JOURNAL
        received = {
            p.relative_to(journal).as_posix(): p.stat().st_size
            for p in (journal.rglob("*") if journal.exists() else [])
            if p.is_file() and p.stat().st_size
        }
        hub.faults.slow_bps = 0
        hub.requests.clear()
        again = run_cli("import", f"hf://{repo}", "--to", str(dest))
        assert again.returncode == 0, f"killed at {moment:.2f}s: {again.stderr}"
        on_disk = files_under(dest)
        assert json.loads(on_disk.pop(MANIFEST_PATH))["commit"] == hub.repos[repo].refs["main"]
        assert on_disk == _expected(hub, repo), f"killed at {moment:.2f}s: exactly the artifact"
        for path, size in received.items():
            gets = [r for m, p, r in hub.requests if m == "GET" and p == path]
            assert all(r is not None and int(r.split("=")[1].rstrip("-")) >= size for r in gets), (
                f"killed at {moment:.2f}s: {path} went on from its {size} received bytes, not from 0: {gets}"
            )
        assert run_cli("verify", str(dest)).returncode == 0
