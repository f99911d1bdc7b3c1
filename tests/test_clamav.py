"""Malware scanning against a real clamd (stock limits, EICAR test signature). It fails closed."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest

from artifact_import import MANIFEST_PATH, ScannerError, VerificationError, import_artifact
from artifact_import.verifiers.clamav import ClamAVVerifier

from .clamd import EICAR, SIGNATURE, Clamd
from .conftest import fast_registry, files_under, repo_name, run_cli
from .hub import LocalHub

MiB = 1 << 20
CLEAN: dict[str, bytes | int] = {
    "config.json": b'{"a": 1}',
    "model.safetensors": 3 * MiB,
    "tokenizer/vocab.txt": b"hello\nworld\n",
    "empty.txt": b"",
}


async def test_a_clean_repo_passes_and_the_verdict_names_the_engine(
    hub: LocalHub, clamd: Clamd, tmp_path: Path
) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, CLEAN)
    result = await import_artifact(
        f"hf://{repo}", tmp_path, registry=fast_registry(), verifiers=[ClamAVVerifier(clamd.address)]
    )
    for f in result.files:
        scan = next(v for v in f.verdicts if v.verifier == "clamav")
        assert scan.ok and scan.data["engine"].startswith("ClamAV ")
    assert result.malware_scan()["ran"] is True
    manifest = json.loads(files_under(tmp_path)[MANIFEST_PATH])
    assert all(any(v["verifier"] == "clamav" for v in f["verdicts"]) for f in manifest["files"])


async def test_eicar_in_a_small_file_fails_naming_file_and_signature(
    hub: LocalHub, clamd: Clamd, tmp_path: Path
) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, {**CLEAN, "scripts/run.sh": b"#!/bin/sh\n" + EICAR + b"\n"})
    with pytest.raises(VerificationError) as info:
        await import_artifact(
            f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[ClamAVVerifier(clamd.address)]
        )
    assert info.value.path == "scripts/run.sh"
    assert f"infected: {SIGNATURE}" in str(info.value)
    assert not (tmp_path / "m").exists(), "nothing of the import is archived"


async def test_eicar_at_the_end_of_a_file_over_clamds_stock_limits_is_found(
    hub: LocalHub, clamd: Clamd, tmp_path: Path
) -> None:
    repo = repo_name("av")
    big = os.urandom(130 * MiB) + EICAR  # over StreamMaxLength and MaxFileSize (100 MB)
    hub.create_repo(repo, {"weights.bin": big})
    with pytest.raises(VerificationError) as info:
        await import_artifact(
            f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[ClamAVVerifier(clamd.address)]
        )
    assert info.value.path == "weights.bin" and SIGNATURE in str(info.value)
    assert not (tmp_path / "m").exists()


async def test_one_stream_over_the_limit_fails_closed_rather_than_passing(
    hub: LocalHub, clamd: Clamd, tmp_path: Path
) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, {"weights.bin": 110 * MiB})
    whole_file = ClamAVVerifier(clamd.address, window_size=200 * MiB)  # as if windows were off
    with pytest.raises(ScannerError, match=r"weights\.bin: malware scan failed.*(size limit|stopped reading)"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[whole_file])
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize(("overlap", "found"), [(4096, True), (16, False)])
async def test_a_signature_across_a_window_boundary_needs_the_overlap(
    hub: LocalHub, clamd: Clamd, tmp_path: Path, overlap: int, found: bool
) -> None:
    repo = repo_name("av")
    window = 1 * MiB
    data = bytearray(os.urandom(3 * MiB))
    data[window - 30 : window - 30 + len(EICAR)] = EICAR  # straddles the first boundary
    hub.create_repo(repo, {"data.bin": bytes(data)})
    verifier = ClamAVVerifier(clamd.address, window_size=window, overlap=overlap)
    attempt = import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[verifier])
    if found:
        with pytest.raises(VerificationError, match=SIGNATURE):
            await attempt
    else:
        result = await attempt  # too small an overlap splits the signature: why the default is 1 MiB
        windows = next(v for v in result.files[0].verdicts if v.verifier == "clamav").data["windows"]
        # Every window after the first replays `overlap` bytes of the one before.
        assert windows == -(-(len(data) - overlap) // (window - overlap)) == 4


async def test_clamd_down_fails_closed(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, CLEAN)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket closes
    with pytest.raises(ScannerError, match=rf"malware scan failed: cannot connect to clamd at tcp://127.0.0.1:{port}"):
        await import_artifact(
            f"hf://{repo}",
            tmp_path / "m",
            registry=fast_registry(),
            verifiers=[ClamAVVerifier(f"tcp://127.0.0.1:{port}")],
        )
    assert not (tmp_path / "m").exists()


async def test_clamd_killed_mid_scan_fails_closed(hub: LocalHub, own_clamd: Clamd, tmp_path: Path) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, {"weights.bin": 60 * MiB})
    hub.faults.slow_bps = 20 * MiB

    async def kill_while_scanning() -> None:
        while not any(r[1] == "weights.bin" for r in hub.requests):  # noqa: ASYNC110 - the hub is another thread
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.8)
        await asyncio.to_thread(own_clamd.kill)

    killer = asyncio.create_task(kill_while_scanning())
    with pytest.raises(ScannerError, match=r"weights\.bin: malware scan failed"):
        await import_artifact(
            f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[ClamAVVerifier(own_clamd.address)]
        )
    await killer
    assert not (tmp_path / "m").exists()


def test_cli_says_whether_a_malware_scan_ran(hub: LocalHub, clamd: Clamd, tmp_path: Path) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, CLEAN)
    scanned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"), "--clamd", clamd.address)
    assert scanned.returncode == 0, scanned.stderr
    assert "malware scan: ClamAV" in scanned.stdout and "all clean" in scanned.stdout
    unscanned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--json")
    assert json.loads(unscanned.stdout)["malware_scan"] == {"ran": False, "engine": None}
    by_env = run_cli(
        "import", f"hf://{repo}", "--to", str(tmp_path / "c"), "--json", env={"ARTIFACT_IMPORT_CLAMD": clamd.address}
    )
    assert json.loads(by_env.stdout)["malware_scan"]["ran"] is True


def test_cli_infected_file_exits_3_naming_file_and_signature(hub: LocalHub, clamd: Clamd, tmp_path: Path) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, {**CLEAN, "eicar.com": EICAR})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--clamd", clamd.address, "--json")
    assert proc.returncode == 3
    error = json.loads(proc.stdout)["error"]
    assert error["path"] == "eicar.com" and SIGNATURE in error["message"]
    assert not (tmp_path / "m").exists()


async def test_a_flagged_file_is_kept_in_quarantine_with_a_report(hub: LocalHub, clamd: Clamd, tmp_path: Path) -> None:
    from artifact_import import VFSStorage

    repo = repo_name("av")
    payload = b"#!/bin/sh\n" + EICAR + b"\n"
    commit = hub.create_repo(repo, {**CLEAN, "scripts/run.sh": payload})
    with pytest.raises(VerificationError, match=SIGNATURE):
        await import_artifact(
            f"hf://{repo}",
            tmp_path / "m",
            registry=fast_registry(),
            verifiers=[ClamAVVerifier(clamd.address)],
            quarantine=VFSStorage("quarantine", tmp_path / "quarantine"),
        )
    assert not (tmp_path / "m").exists(), "the destination gets nothing"
    kept = files_under(tmp_path / "quarantine")
    [path] = [p for p in kept if p.endswith("scripts/run.sh")]
    assert kept[path] == payload
    report = json.loads(kept[f"{path}.quarantine.json"])
    assert report["commit"] == commit and report["path"] == "scripts/run.sh"
    assert any(v["verifier"] == "clamav" and SIGNATURE in v["detail"] for v in report["verdicts"])
    assert len(kept) == 2, "only the flagged file and its report"


def test_cli_quarantine_option(hub: LocalHub, clamd: Clamd, tmp_path: Path) -> None:
    repo = repo_name("av")
    hub.create_repo(repo, {**CLEAN, "eicar.com": EICAR})
    proc = run_cli(
        "import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--clamd", clamd.address,
        "--quarantine", str(tmp_path / "q"),
    )  # fmt: skip
    assert proc.returncode == 3
    assert "kept in quarantine" in proc.stderr
    assert any(p.endswith("eicar.com") for p in files_under(tmp_path / "q"))
    assert not (tmp_path / "m").exists()
