"""Pickle safety and safetensors headers: bad content is refused, good content passes, nothing is unpickled."""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from artifact_import import MANIFEST_PATH, VerificationError, import_artifact
from artifact_import.verifiers.pickle import PickleVerifier
from artifact_import.verifiers.safetensors import SafetensorsVerifier

from .conftest import fast_registry, files_under, repo_name, run_cli, verdict_of
from .hub import LocalHub, safetensors_header
from .modelfiles import no_payload_runs

PWNED = "/tmp/artifact-import-test-pwned"


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {PWNED}",))


@contextmanager
def _fake_torch() -> Iterator[types.ModuleType]:
    """Just enough of a ``torch`` module for pickle to write references to it (no torch needed)."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]

    class FloatStorage:
        pass

    FloatStorage.__module__ = "torch"
    FloatStorage.__qualname__ = "FloatStorage"
    torch.FloatStorage = FloatStorage  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield torch
    finally:
        del sys.modules["torch"], sys.modules["torch._utils"]


class _Tensor:
    def __init__(self, key: str) -> None:
        self.key = key

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (sys.modules["torch._utils"]._rebuild_tensor_v2, (self.key, 0, (2, 2), (2, 1), False, OrderedDict()))


def _state_dict_pickle() -> bytes:
    with _fake_torch() as torch:

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj: object) -> object:
                # How torch.save refers to storages: ("storage", StorageType, key, location, numel).
                if isinstance(obj, _Storage):
                    return ("storage", torch.FloatStorage, obj.key, "cpu", 4)
                return None

        class _Storage:
            def __init__(self, key: str) -> None:
                self.key = key

        buf = io.BytesIO()
        state = OrderedDict([("layer.weight", _Tensor("0")), ("layer.bias", _Tensor("1"))])
        Pickler(buf, protocol=2).dump({"state": state, "storages": [_Storage("0"), _Storage("1")]})
        return buf.getvalue()


def _zip_checkpoint(pkl: bytes, *, deflate: bool = False) -> bytes:
    out = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(out, "w", compression=method) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/data/0", os.urandom(4 * 1024 * 1024))
        z.writestr("archive/data/1", os.urandom(64))
        z.writestr("archive/version", b"3\n")
    return out.getvalue()


def _legacy_checkpoint(obj_pickle: bytes) -> bytes:
    parts = [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        obj_pickle,
        pickle.dumps(["0", "1"], protocol=2),
    ]
    return b"".join(parts) + os.urandom(2 * 1024 * 1024)


@pytest.fixture(autouse=True)
def _nothing_ran() -> Iterator[None]:
    with no_payload_runs(PWNED):
        yield


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
async def test_a_reduce_calling_os_system_is_refused_without_unpickling(protocol: int) -> None:
    evil = pickle.dumps({"weights": [1, 2, 3], "payload": _Evil()}, protocol=protocol)
    verdict = await verdict_of(PickleVerifier(), "pytorch_model.bin", evil, chunk=7)
    assert not verdict.ok
    assert "posix.system" in verdict.detail or "os.system" in verdict.detail
    assert verdict.data["unsafe"] == ["posix.system"]


@pytest.mark.parametrize("deflate", [False, True])
async def test_malicious_pickle_inside_a_zip_checkpoint_is_refused(deflate: bool) -> None:
    data = _zip_checkpoint(pickle.dumps(_Evil(), protocol=2), deflate=deflate)
    verdict = await verdict_of(PickleVerifier(), "model.pt", data)
    assert not verdict.ok and verdict.data["unsafe"] == ["posix.system"]


async def test_benign_pytorch_checkpoints_are_accepted() -> None:
    pkl = _state_dict_pickle()
    for name, data in [("model.pt", _zip_checkpoint(pkl)), ("pytorch_model.bin", _legacy_checkpoint(pkl))]:
        verdict = await verdict_of(PickleVerifier(), name, data)
        assert verdict.ok, verdict.detail
        assert "torch._utils._rebuild_tensor_v2" in verdict.data["imports"]
        assert "collections.OrderedDict" in verdict.data["imports"]


async def test_malicious_object_after_the_legacy_header_pickles_is_found() -> None:
    verdict = await verdict_of(PickleVerifier(), "old.bin", _legacy_checkpoint(pickle.dumps(_Evil(), protocol=2)))
    assert not verdict.ok and "posix.system" in verdict.data["unsafe"]


async def test_warn_policy_records_instead_of_failing() -> None:
    verdict = await verdict_of(PickleVerifier("warn"), "a.pkl", pickle.dumps(_Evil()))
    assert verdict.ok and verdict.detail.startswith("warning") and verdict.data["unsafe"] == ["posix.system"]


async def test_non_pickle_bin_files_pass_as_such() -> None:
    verdict = await verdict_of(PickleVerifier(), "ggml-model.bin", b"GGUF" + bytes(range(256)) * 100)
    assert verdict.ok and verdict.data["format"] == "not a pickle"


async def test_random_bytes_in_a_bin_file_are_not_taken_for_a_pickle() -> None:
    """Issue 16: random bytes were refused as "<STACK_GLOBAL of computed names>". A file that is not a pickle by
    content (no protocol header) is not one, whatever it happens to contain."""
    import random

    for seed in range(200):
        rng = random.Random(seed)
        data = rng.randbytes(rng.choice([64, 4096, 70_000]))
        if data[:1] == b"\x80":
            continue  # starts like a pickle: scanned as one, by design
        verdict = await verdict_of(PickleVerifier(), "pytorch_model.bin", data)
        assert verdict.ok, (seed, verdict.detail)


def _safetensors(tensors: dict[str, tuple[str, list[int], list[int]]], data: bytes) -> bytes:
    header = {n: {"dtype": d, "shape": s, "data_offsets": o} for n, (d, s, o) in tensors.items()}
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.mark.parametrize("chunk", [1, 5, 1 << 20])
async def test_valid_safetensors_pass_however_the_bytes_are_chunked(chunk: int) -> None:
    data = _safetensors({"a": ("F32", [2, 2], [0, 16]), "b": ("BF16", [3], [16, 22])}, bytes(22))
    verdict = await verdict_of(SafetensorsVerifier(), "model.safetensors", data, chunk=chunk)
    assert verdict.ok, verdict.detail
    assert verdict.data["tensors"] == 2


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"\x10\x00", "8-byte header length is missing"),
        (struct.pack("<Q", 500) + b'{"a": 1}', "runs past the end"),
        (struct.pack("<Q", 2**40) + b"{}", "over the"),
        (struct.pack("<Q", 4) + b"nope", "not JSON"),
        (_safetensors({"a": ("F32", [4], [0, 16])}, bytes(8)), "past the 8-byte data section"),
        (_safetensors({"a": ("F32", [4], [0, 12])}, bytes(12)), "expected 16"),
        (_safetensors({"a": ("F99", [1], [0, 4])}, bytes(4)), "unknown dtype"),
        (_safetensors({"a": ("U8", [4], [0, 4]), "b": ("U8", [4], [2, 6])}, bytes(6)), "overlaps"),
        (_safetensors({"a": ("U8", [4], [0, 4])}, bytes(10)), "cover 4 bytes of a 10-byte"),
    ],
)
async def test_malformed_safetensors_are_refused(data: bytes, problem: str) -> None:
    verdict = await verdict_of(SafetensorsVerifier(), "model.safetensors", data, chunk=3)
    assert not verdict.ok and problem in verdict.detail


async def test_import_refuses_a_malicious_pickle_and_archives_nothing(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("pickle")
    good = _zip_checkpoint(_state_dict_pickle())
    hub.create_repo(repo, {"config.json": b"{}", "pytorch_model.bin": pickle.dumps(_Evil()), "ok.pt": good})
    with pytest.raises(VerificationError, match=r"pytorch_model\.bin.*unsafe pickle.*posix\.system"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[PickleVerifier()])
    assert not (tmp_path / "m").exists()


def test_cli_scans_pickles_and_safetensors_by_default(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("pickle")
    hub.create_repo(
        repo,
        {
            "model.safetensors": safetensors_header(4096) + bytes(4096 - len(safetensors_header(4096))),
            "training_args.bin": pickle.dumps(_Evil()),
        },
    )
    refused = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"), "--json")
    assert refused.returncode == 3
    assert "training_args.bin" in refused.stderr and "--pickle-policy warn" in refused.stderr
    warned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--json", "--pickle-policy", "warn")
    assert warned.returncode == 0, warned.stderr
    files = {f["path"]: f for f in json.loads(warned.stdout)["files"]}
    pickle_verdict = next(v for v in files["training_args.bin"]["verdicts"] if v["verifier"] == "pickle")
    assert pickle_verdict["data"]["unsafe"] == ["posix.system"]
    manifest = json.loads(files_under(tmp_path / "b")[MANIFEST_PATH])
    recorded = {f["path"]: [v["verifier"] for v in f["verdicts"]] for f in manifest["files"]}
    # Every file is looked at for pickles by content, and carries the hub's own scan.
    assert recorded == {
        "model.safetensors": ["checksum", "safetensors", "pickle", "hub-scan"],
        "training_args.bin": ["checksum", "pickle", "hub-scan"],
    }


def test_cli_refuses_a_truncated_safetensors_header(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("st")
    header = safetensors_header(100_000)
    hub.create_repo(repo, {"model.safetensors": header[: len(header) // 2]})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 3
    assert "model.safetensors" in proc.stderr and "invalid safetensors" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_nothing_here_unpickles() -> None:
    # A guard on the guard: no verifier module calls a loader (names in prose do not count).
    import ast

    loaders = {"load", "loads", "Unpickler", "_Unpickler"}
    for source in (Path(__file__).resolve().parent.parent / "artifact_import" / "verifiers").glob("*.py"):
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pickle":
                assert node.attr not in loaders, f"{source.name} calls pickle.{node.attr}"
            if isinstance(node, ast.ImportFrom) and node.module == "pickle":
                assert not {a.name for a in node.names} & loaders, f"{source.name} imports a pickle loader"
            assert not (isinstance(node, ast.Import) and any(a.name == "pickle" for a in node.names)), source.name
