"""Everyday files are not threats: real images, fonts, docs, licences, audio and archives import with the
default policies, while a pickle a loader would open stays refused whatever it looks like."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from artifact_import import ArtifactFile
from artifact_import.config import VerifySettings
from artifact_import.verifiers import build_verifiers
from artifact_import.verifiers.pickle import PickleVerifier

from .conftest import files_under, repo_name, run_cli, verdict_of
from .everyday import everyday
from .hub import LocalHub
from .modelfiles import Payload

FILES = everyday()


def test_the_corpus_holds_what_model_repositories_carry() -> None:
    kinds = {f.name.split("/")[1] for f in FILES if f.name.startswith("installed/")}
    assert {"png", "ttf", "gz", "pdf", "mo", "svg"} <= kinds
    assert sum(f.name.endswith(".png") for f in FILES) >= 20
    assert any(f.name.startswith("licenses/") for f in FILES)


async def test_no_default_verifier_flags_an_everyday_file() -> None:
    flagged = []
    for f in FILES:
        for verifier in build_verifiers(VerifySettings()):
            if verifier.applies_to(ArtifactFile(f.name, len(f.data))):
                verdict = await verdict_of(verifier, f.name, f.data)
                if not verdict.ok:
                    flagged.append(f"{f.name}: {verdict.detail[:120]}")
    assert not flagged, "\n".join(flagged)


def test_a_repository_of_everyday_files_imports_with_the_default_policies(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("everyday")
    files = {f.name: f.data for f in FILES}
    hub.create_repo(repo, {"config.json": b"{}", **files})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["file_count"] == len(files) + 1
    on_disk = files_under(tmp_path / "m")
    assert all(on_disk[name] == data for name, data in files.items())


# --- what stays refused: the name a loader opens, or the PROTO opcode, decides --------------------------


@pytest.mark.parametrize(
    ("name", "data"),
    [
        # CVE-2025-10155: a protocol-0 pickle (no PROTO opcode, reads as text) where torch.load looks.
        ("pytorch_model.bin", pickle.dumps(Payload("/nonexistent"), protocol=0)),
        ("optimizer.pt", pickle.dumps(Payload("/nonexistent"), protocol=1)),
        # Text content under a loader's name: labels in a .dat are read as torch.load would read them.
        ("labels.dat", b"cos\nsystem\n(S'true'\ntR."),
        # A PROTO opcode: a pickle whatever the file is called.
        ("figure.png", pickle.dumps(Payload("/nonexistent"), protocol=4)),
        ("README.md", pickle.dumps(Payload("/nonexistent"), protocol=2)),
        # A pickle in a member of an archive a loader opens.
        ("docs.tar", b""),
    ],
)
async def test_what_a_loader_would_unpickle_is_refused_whatever_it_looks_like(name: str, data: bytes) -> None:
    if name == "docs.tar":
        from .everyday import _tar

        data = _tar({"model.pkl": pickle.dumps(Payload("/nonexistent"), protocol=0)}, "w")
    verdict = await verdict_of(PickleVerifier(), name, data)
    assert not verdict.ok and {"posix.system", "os.system"} & set(verdict.data["unsafe"]), verdict.detail


async def test_binary_of_no_known_format_is_refused_only_for_what_it_would_import() -> None:
    # No loader opens "weights" by that name; its bytes are judged by the imports they would make.
    quiet = bytes([0x4B, 0x05]) + bytes(range(256)) * 4  # BININT1, then binary noise
    assert (await verdict_of(PickleVerifier(), "weights", quiet)).ok
    loud = b"cposix\nsystem\n(\x00\x01tR."
    verdict = await verdict_of(PickleVerifier(), "weights", loud)
    assert not verdict.ok and verdict.data["unsafe"] == ["posix.system"], verdict.detail
