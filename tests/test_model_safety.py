"""Model-file safety on real files: every real checkpoint passes, every executable pickle is caught.

The malicious corpus is first proven real (each sample runs its payload when
its loader loads it, in a child process); then each is refused through the
CLI with nothing archived. Benign files are those the libraries write.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from safetensors import safe_open

from artifact_import.verifiers.gguf import GgufVerifier
from artifact_import.verifiers.keras import KerasVerifier
from artifact_import.verifiers.onnx import OnnxVerifier
from artifact_import.verifiers.pickle import PickleVerifier
from artifact_import.verifiers.safetensors import SafetensorsVerifier

from .conftest import files_under, repo_name, run_cli, verdict_of
from .hub import LocalHub, unsafe_scan
from .modelfiles import CHECKPOINTS, Payload, Sample, benign, malicious, no_payload_runs

MARKER = os.path.join(tempfile.gettempdir(), f"artifact-import-payload-ran-{os.getpid()}")
EVIL = malicious(MARKER)
GOOD = benign()


@pytest.fixture(autouse=True)
def _no_payload_ran() -> Iterator[None]:
    with no_payload_runs(MARKER):
        yield


# --- the corpus is real -----------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [s for s in EVIL if s.loader], ids=lambda s: s.name)
def test_each_malicious_sample_runs_its_payload_when_loaded(sample: Sample, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / sample.name
    # Built again with this test's own marker, so that what runs here cannot touch the shared one.
    path.write_bytes(next(s for s in malicious(str(marker)) if s.name == sample.name).data)
    code = f"path = {str(path)!r}\n{sample.loader}"
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=60, check=False)
    assert marker.exists(), f"{sample.name}: {sample.loader!r} did not run the payload: the sample proves nothing"


# --- verdicts, whatever the chunking ------------------------------------------------------------------


@pytest.mark.parametrize("sample", GOOD, ids=lambda s: s.name)
@pytest.mark.parametrize("chunk", [1, 13, 65536])
async def test_benign_files_made_by_the_real_libraries_pass(sample: Sample, chunk: int) -> None:
    if chunk == 1 and len(sample.data) > 16384:
        chunk = 509  # byte-by-byte on a large file is slow and proves no more than a prime
    # Small chunks through the thread that reads as they come; whole 64 KiB chunks gathered and read at the end.
    verdict = await verdict_of(PickleVerifier(), sample.name, sample.data, chunk, listed=chunk == 65536)
    assert verdict.ok, verdict.detail
    assert not verdict.data["unsafe"]


@pytest.mark.parametrize("sample", EVIL, ids=lambda s: s.name)
@pytest.mark.parametrize("chunk", [7, 65536])
async def test_malicious_files_are_refused_by_content(sample: Sample, chunk: int) -> None:
    verdict = await verdict_of(PickleVerifier(), sample.name, sample.data, chunk, listed=chunk == 65536)
    assert not verdict.ok
    assert "posix.system" in verdict.data["unsafe"] or "problem" in verdict.data, verdict.detail


def test_the_real_torch_checkpoints_are_those_torch_writes() -> None:
    # torch.save writes data descriptors: bit 3 set, zero sizes in the local header. This is what was refused.
    data = next(s.data for s in GOOD if s.name == "state_dict_zip.pt")
    flags, _method, _t, _d, _crc, csize, usize = struct.unpack("<HHHHIII", data[6:26])
    assert flags & 0x8 and csize == 0 and usize == 0


async def test_a_torchscript_archive_is_refused_by_default_and_its_classes_pass_under_its_policy() -> None:
    ts = (CHECKPOINTS / "torchscript.pt").read_bytes()
    refused = await verdict_of(PickleVerifier(), "m.pt", ts)
    assert not refused.ok and "TorchScript archive" in refused.detail and not refused.data["unsafe"]
    warned = await verdict_of(PickleVerifier(torchscript="warn"), "m.pt", ts)
    assert warned.ok and "TorchScript archive" in warned.data["warning"]
    assert (await verdict_of(PickleVerifier(torchscript="off"), "m.pt", ts)).ok
    # The same imports in a plain pickle would be Python imports of a module called __torch__.
    plain = b"\x80\x02c__torch__.torch.nn.modules.linear\nLinear\n)\x81."
    verdict = await verdict_of(PickleVerifier(torchscript="off"), "m.pt", plain)
    assert not verdict.ok and verdict.data["unsafe"] == ["__torch__.torch.nn.modules.linear.Linear"]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\x80\x02cposix\nsystem\n", "truncated"),  # imported, then the file ends
        (b"\x80\x02\x82\x01.", "extension code"),  # copyreg extension codes name a global nobody can see
        (b"\x80\x02" + b"(" * 100_001, "nested"),  # past the walker's bound: refused, not guessed
    ],
)
async def test_what_cannot_be_accounted_for_is_refused(data: bytes, reason: str) -> None:
    verdict = await verdict_of(PickleVerifier(), "x.bin", data)
    assert not verdict.ok and reason in verdict.detail, verdict.detail


async def test_an_allow_list_entry_added_by_the_user_passes() -> None:
    data = pickle.dumps(Payload("/nonexistent"), protocol=2)
    assert (await verdict_of(PickleVerifier(extra_safe=frozenset({"posix.system"})), "a.pkl", data)).ok


async def test_a_large_array_pickle_is_skipped_not_held() -> None:
    # 64 MiB of array bytes in one BINBYTES: read past in blocks, never accumulated.
    data = pickle.dumps({"w": np.zeros(8 << 20)}, protocol=4)
    verdict = await verdict_of(PickleVerifier(), "big.pkl", data, chunk=1 << 20)
    assert verdict.ok and verdict.data["format"] == "pickle"


# --- through the CLI ----------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", EVIL, ids=lambda s: s.name)
def test_the_cli_refuses_each_malicious_file_and_archives_nothing(
    sample: Sample, hub: LocalHub, tmp_path: Path
) -> None:
    repo = repo_name("evil")
    hub.create_repo(repo, {"config.json": b"{}", sample.name: sample.data})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 3, proc.stderr
    assert sample.name in proc.stderr and "pickle" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_the_cli_imports_every_benign_file_together(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("good")
    hub.create_repo(repo, {s.name: s.data for s in GOOD})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["file_count"] == len(GOOD)


def test_warn_prints_each_finding_and_imports(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("warn")
    evil = next(s for s in EVIL if s.name == "model.joblib")
    hub.create_repo(repo, {"model.joblib": evil.data, "config.json": b"{}"})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--pickle-policy", "warn")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and "model.joblib: pickle:" in lines[0] and "posix.system" in lines[0]
    assert files_under(tmp_path / "m")["model.joblib"] == evil.data


# --- the Hub's own scan -----------------------------------------------------------------------------


def test_a_file_the_hub_flags_is_refused_and_the_scan_is_recorded(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hubscan")
    hub.create_repo(repo, {"config.json": b"{}", "model.safetensors": 4096})
    hub.scans[(repo, "model.safetensors")] = unsafe_scan(virus="Win.Test.EICAR_HDB-1")
    refused = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"))
    assert refused.returncode == 3
    assert "model.safetensors" in refused.stderr and "Win.Test.EICAR_HDB-1" in refused.stderr
    assert not (tmp_path / "a").exists()
    warned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--hub-scan-policy", "warn", "--json")
    assert warned.returncode == 0, warned.stderr
    assert "warning: model.safetensors: hub-scan:" in warned.stderr
    files = {f["path"]: f for f in json.loads(warned.stdout)["files"]}
    scan = next(v for v in files["config.json"]["verdicts"] if v["verifier"] == "hub-scan")
    assert scan["ok"] and scan["data"]["status"] == "safe"


def test_dangerous_pickle_imports_the_hub_found_are_named(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hubscan")
    hub.create_repo(repo, {"model.safetensors": 4096})
    hub.scans[(repo, "model.safetensors")] = unsafe_scan(imports=[("builtins", "exec")])
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"))
    assert proc.returncode == 3 and "builtins.exec" in proc.stderr


def test_hub_scan_off_does_not_ask_for_it(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hubscan")
    hub.create_repo(repo, {"model.safetensors": 4096})
    hub.scans[(repo, "model.safetensors")] = unsafe_scan(virus="X")
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"), "--hub-scan-policy", "off", "--json")
    assert proc.returncode == 0, proc.stderr
    verdicts = json.loads(proc.stdout)["files"][0]["verdicts"]
    assert "hub-scan" not in {v["verifier"] for v in verdicts}


# --- safetensors: what the official library accepts, no more, no less ---------------------------------


def _st(header: bytes, data: bytes = b"") -> bytes:
    return struct.pack("<Q", len(header)) + header + data


_T = b'"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}'
SAFETENSORS_CASES = {
    "valid": _st(b"{" + _T + b"}", b"\0"),
    "empty": _st(b"{}"),
    "padded": _st(b"{" + _T + b"}   ", b"\0"),
    "leading space": _st(b" {}"),
    "null metadata": _st(b'{"__metadata__":null}'),
    "duplicated metadata": _st(b'{"__metadata__":{"a":"b"},"__metadata__":{"c":"d"}}'),
    "duplicated tensor field": _st(b'{"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}}', b"\0"),
    "duplicated tensor": _st(b"{" + _T + b"," + _T + b"}", b"\0"),
    "utf-8 bom": _st(b"\xef\xbb\xbf{}"),
    "utf-16": _st("{}".encode("utf-16")),
    "invalid utf-8": _st(b'{"__metadata__":{"x":"\xff"}}'),
    "lone surrogate": _st(b'{"__metadata__":{"\\udc00":"x"}}'),
    "surrogate pair": _st(b'{"__metadata__":{"\\ud83d\\ude00":"x"}}'),
    "nan": _st(b'{"__metadata__":{"a":NaN}}'),
    "boolean shape": _st(b'{"a":{"dtype":"U8","shape":[true],"data_offsets":[0,1]}}', b"\0"),
    "boolean offset": _st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[false,true]}}', b"\0"),
    "float offset": _st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1.0]}}', b"\0"),
    "2**64 shape": _st(b'{"a":{"dtype":"U8","shape":[18446744073709551616],"data_offsets":[0,1]}}', b"\0"),
    "overflowing shape": _st(b'{"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,1]}}', b"\0"),
    "odd F4": _st(b'{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}}', b"\0\0"),
    "even F4": _st(b'{"a":{"dtype":"F4","shape":[2],"data_offsets":[0,1]}}', b"\0"),
    "F6_E2M3": _st(b'{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}', b"\0" * 3),
    "F6_E3M2 misaligned": _st(b'{"a":{"dtype":"F6_E3M2","shape":[2],"data_offsets":[0,2]}}', b"\0\0"),
    "F8_E4M3FNUZ": _st(b'{"a":{"dtype":"F8_E4M3FNUZ","shape":[2],"data_offsets":[0,2]}}', b"\0\0"),
    "F8_E5M2FNUZ": _st(b'{"a":{"dtype":"F8_E5M2FNUZ","shape":[2],"data_offsets":[0,2]}}', b"\0\0"),
    "C128 unknown": _st(b'{"a":{"dtype":"C128","shape":[1],"data_offsets":[0,16]}}', b"\0" * 16),
    "metadata value not a string": _st(b'{"__metadata__":{"a":1}}'),
    "deeply nested": _st(b'{"__metadata__":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    "trailing NUL": _st(b"{}\x00"),
    "not an object": _st(b"[]"),
    "extra tensor field": _st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}}', b"\0"),
    "zero-size tensor first": _st(b'{"b":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},' + _T + b"}", b"\0"),
    "gap": _st(b'{"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}', b"\0\0"),
    "uncovered tail": _st(b"{" + _T + b"}", b"\0\0"),
}


@pytest.mark.parametrize("name", list(SAFETENSORS_CASES))
async def test_safetensors_verdicts_match_the_official_library(name: str, tmp_path: Path) -> None:
    data = SAFETENSORS_CASES[name]
    path = tmp_path / "x.safetensors"
    path.write_bytes(data)
    try:
        with safe_open(str(path), framework="numpy") as f:
            list(f.keys())
        library_ok = True
    except Exception:
        library_ok = False
    verdict = await verdict_of(SafetensorsVerifier(), "x.safetensors", data, chunk=5)
    assert verdict.ok == library_ok, f"{name}: safetensors says {library_ok}, we say {verdict.detail}"


# --- Keras, ONNX, GGUF ---------------------------------------------------------------------------------


def _keras_zip(config: dict[str, object]) -> bytes:
    import io
    import zipfile

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + bytes(64))
    return out.getvalue()


def _layer(class_name: str, module: str = "keras.layers", **config: object) -> dict[str, object]:
    return {"module": module, "class_name": class_name, "config": {"name": class_name.lower(), **config}}


def _sequential(*layers: dict[str, object]) -> dict[str, object]:
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "seq", "layers": list(layers)}}


LAMBDA = _layer("Lambda", function={"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA"}})


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (_sequential(_layer("Dense", units=4)), None),
        (_sequential(_layer("Dense", units=4), LAMBDA), "Lambda layer 'lambda'"),
        (_sequential(_layer("MyLayer", module="evil_pkg.layers")), "importing module 'evil_pkg.layers'"),
    ],
)
async def test_keras_archives_with_code_in_their_config_are_refused(
    config: dict[str, object], problem: str | None
) -> None:
    verdict = await verdict_of(KerasVerifier(), "model.keras", _keras_zip(config))
    assert verdict.ok == (problem is None), verdict.detail
    if problem:
        assert problem in verdict.detail


@pytest.mark.parametrize("with_lambda", [False, True])
async def test_legacy_h5_models_written_by_h5py_are_searched_for_lambda_layers(
    with_lambda: bool, tmp_path: Path
) -> None:
    layers = [_layer("Dense", units=4), *([LAMBDA] if with_lambda else [])]
    path = tmp_path / "model.h5"
    with h5py.File(path, "w") as f:
        # What tf.keras writes: the model config as a JSON string attribute of the root group.
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"layers": layers}})
        f.create_dataset("model_weights/dense/kernel", data=[[0.0] * 4] * 4)
    verdict = await verdict_of(KerasVerifier(), "model.h5", path.read_bytes())
    assert verdict.ok != with_lambda, verdict.detail


@pytest.mark.parametrize(
    ("location", "ok"),
    [("weights.bin", True), ("sub/weights.bin", True), ("../../etc/passwd", False), ("/root/.ssh/id_rsa", False)],
)
async def test_onnx_external_data_must_stay_beside_the_model(location: str, ok: bool) -> None:
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [2], struct.pack("<2f", 1.0, 2.0), raw=True)
    # What onnx.save(..., save_as_external_data=True) does to each tensor it moves out.
    onnx.external_data_helper.set_external_data(tensor, location=location)
    tensor.ClearField("raw_data")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[tensor],
    )
    data = helper.make_model(graph).SerializeToString()
    verdict = await verdict_of(OnnxVerifier(), "model.onnx", data, chunk=3)
    assert verdict.ok == ok, verdict.detail
    assert location in verdict.data["external_data"]


def _gguf(kvs: list[tuple[str, int, bytes]], *, version: int = 3, tensors: int = 0, tail: bytes = b"") -> bytes:
    out = b"GGUF" + struct.pack("<IQQ", version, tensors, len(kvs))
    for key, kind, value in kvs:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", kind) + value
    return out + tail


def _gstr(text: str) -> bytes:
    return struct.pack("<Q", len(text.encode())) + text.encode()


_TENSOR = _gstr("w") + struct.pack("<I", 1) + struct.pack("<Q", 4) + struct.pack("<I", 0) + struct.pack("<Q", 0)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (_gguf([("general.architecture", 8, _gstr("llama"))], tensors=1, tail=_TENSOR + bytes(32)), None),
        (_gguf([("tokenizer.chat_template", 8, _gstr("{{ messages[0].content }}"))]), None),
        (
            _gguf([("tokenizer.chat_template", 8, _gstr("{{ ''.__class__.__mro__[1].__subclasses__() }}"))]),
            "chat template",
        ),
        (_gguf([], version=7), "unknown GGUF version"),
        (_gguf([("a", 8, struct.pack("<Q", 1 << 40))]), "a string of"),
        (_gguf([("a", 99, b"")]), "unknown value type"),
        (_gguf([("a", 4, b"\0" * 4), ("a", 4, b"\0" * 4)]), "appears twice"),
        (_gguf([("a", 7, b"\x02")]), "a boolean of value 2"),
        (_gguf([], tensors=1, tail=_gstr("w") + struct.pack("<I", 9)), "dimensions"),
        (_gguf([("general.architecture", 8, _gstr("llama"))])[:20], "truncated"),
    ],
)
async def test_gguf_headers_are_read_as_llama_cpp_reads_them(data: bytes, problem: str | None) -> None:
    verdict = await verdict_of(GgufVerifier(), "model.gguf", data, chunk=11)
    assert verdict.ok == (problem is None), verdict.detail
    if problem:
        assert problem in verdict.detail


def test_format_policy_warn_imports_with_a_warning(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("fmt")
    bad = _gguf([("tokenizer.chat_template", 8, _gstr("{{ cycler.__init__.__globals__.os }}"))])
    hub.create_repo(repo, {"model.gguf": bad})
    refused = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"))
    assert refused.returncode == 3 and "model.gguf" in refused.stderr and "--format-policy warn" in refused.stderr
    warned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--format-policy", "warn")
    assert warned.returncode == 0 and "warning: model.gguf: gguf: chat template" in warned.stderr


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 8, 13, 21, 23, 24, 25, 34, 55, 4096])
async def test_a_descriptor_signature_inside_stored_data_does_not_end_the_member(chunk: int) -> None:
    from .modelfiles import _zip

    # A tensor whose bytes hold the signature followed by sizes that are not its own, then the real end.
    tensor = os.urandom(100) + b"PK\x07\x08" + struct.pack("<III", 0, 7, 7) + os.urandom(100)
    pkl = pickle.dumps({"w": 1}, protocol=2)
    data = _zip({"archive/data/0": tensor, "archive/data.pkl": pkl}, descriptors=True)
    verdict = await verdict_of(PickleVerifier(), "m.pt", data, chunk)
    assert verdict.ok and verdict.data["format"] == "zip (1 pickle)", verdict.detail
