"""Bypasses of pickle scanners, ours included: each proven to run its payload with the real loader, then refused.

Every file here is read by some loader differently from the way a one-pass
scanner first read it: as a tar by torch and as a pickle by ``pickle.load``,
from the last zip end record rather than the first, raw as well as
decompressed, with a dtype numpy spells its own way. The scanner now reads
each file the way each of its loaders does.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from artifact_import import ArtifactFile
from artifact_import.verifiers.onnx import OnnxVerifier
from artifact_import.verifiers.pickle import PickleVerifier

from .bypasses import (
    JIT_LOAD,
    bypasses,
    bz2_raw_pickle_parts,
    torchscript_setstate,
    write_sparse,
)
from .conftest import files_under, repo_name, run_cli, verdict_of
from .hub import LocalHub
from .modelfiles import PICKLE_LOAD, Payload, Sample, no_payload_runs

MARKER = os.path.join(tempfile.gettempdir(), f"artifact-import-bypass-ran-{os.getpid()}")
EVIL = bypasses(MARKER)


@pytest.fixture(autouse=True)
def _no_payload_ran() -> Iterator[None]:
    with no_payload_runs(MARKER):
        yield


def _runs(loader: str, path: Path, cwd: Path) -> None:
    if "torch" in loader:
        pytest.importorskip("torch")
    code = f"path = {str(path)!r}\n{loader}"
    subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, timeout=120, check=False)


@pytest.mark.parametrize("sample", EVIL, ids=lambda s: s.name)
def test_each_bypass_runs_its_payload_when_loaded(sample: Sample, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / sample.name
    path.write_bytes(next(s for s in bypasses(str(marker)) if s.name == sample.name).data)
    assert sample.loader
    _runs(sample.loader, path, tmp_path)
    assert marker.exists(), f"{sample.name}: {sample.loader!r} did not run the payload: the sample proves nothing"


@pytest.mark.parametrize("sample", EVIL, ids=lambda s: s.name)
@pytest.mark.parametrize("chunk", [7, 65536])
async def test_each_bypass_is_refused(sample: Sample, chunk: int) -> None:
    verdict = await verdict_of(PickleVerifier(), sample.name, sample.data, chunk)
    assert not verdict.ok, verdict.detail
    assert "posix.system" in verdict.data["unsafe"] or "problem" in verdict.data or verdict.data["unsafe"]


@pytest.mark.parametrize("sample", EVIL, ids=lambda s: s.name)
def test_the_cli_refuses_each_bypass_and_archives_nothing(sample: Sample, hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("bypass")
    hub.create_repo(repo, {"config.json": b"{}", sample.name: sample.data})
    proc = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert proc.returncode == 3, proc.stderr
    assert f"error: {sample.name}: verification failed (pickle:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m").exists()


# --- TorchScript: code, refused by default under a policy of its own ------------------------------------


def test_a_torchscript_setstate_runs_when_loaded(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(torchscript_setstate())
    _runs(JIT_LOAD, path, tmp_path)
    assert (tmp_path / "torchscript-payload-ran").exists()


def test_torchscript_is_refused_by_default_and_imported_when_the_policy_allows(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("torchscript")
    data = torchscript_setstate()
    hub.create_repo(repo, {"config.json": b"{}", "model.pt": data})
    refused = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "a"))
    assert refused.returncode == 3, refused.stderr
    assert "model.pt" in refused.stderr and "TorchScript archive" in refused.stderr
    assert "--torchscript-policy warn" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "a").exists()
    warned = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "b"), "--torchscript-policy", "warn")
    assert warned.returncode == 0, warned.stderr
    assert "warning: model.pt: pickle:" in warned.stderr and "TorchScript archive" in warned.stderr
    assert files_under(tmp_path / "b")["model.pt"] == data
    off = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "c"), "--torchscript-policy", "off", "--json")
    assert off.returncode == 0, off.stderr
    verdict = next(
        v
        for f in json.loads(off.stdout)["files"]
        if f["path"] == "model.pt"
        for v in f["verdicts"]
        if v["verifier"] == "pickle"
    )
    assert verdict["ok"] and "warning" not in verdict["data"]


async def test_torchscript_imports_stay_refused_outside_a_torchscript_archive() -> None:
    plain = b"\x80\x02c__torch__.torch.nn.modules.linear\nLinear\n)\x81."
    verdict = await verdict_of(PickleVerifier(torchscript="off"), "m.pt", plain)
    assert not verdict.ok and verdict.data["unsafe"] == ["__torch__.torch.nn.modules.linear.Linear"]


# --- a stream whose raw bytes are a pickle too: 825 MB of BINBYTES, written sparse ------------------------


async def _feed_sparse(name: str, head: bytes, gap: int, tail: bytes) -> object:
    session = PickleVerifier().start(ArtifactFile(name, len(head) + gap + len(tail)))
    await session.feed(head)
    zeros = bytes(1 << 20)
    left = gap
    while left:
        step = min(left, len(zeros))
        await session.feed(zeros[:step])
        left -= step
    await session.feed(tail)
    return await session.finish()


@pytest.mark.slow
async def test_a_bz2_stream_whose_raw_bytes_unpickle_is_read_both_ways(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    head, gap, tail = bz2_raw_pickle_parts(pickle.dumps(Payload(str(marker)), protocol=2))
    path = tmp_path / "model.joblib"
    write_sparse(path, head, gap, tail)
    _runs(PICKLE_LOAD, path, tmp_path)  # pickle.load skips the 825 MB of "BINBYTES" and runs what follows
    assert marker.exists()
    head, gap, tail = bz2_raw_pickle_parts(pickle.dumps(Payload(MARKER), protocol=2))
    verdict = await _feed_sparse("model.joblib", head, gap, tail)
    assert not verdict.ok and "posix.system" in verdict.data["unsafe"], verdict.detail  # type: ignore[attr-defined]


# --- ONNX nested deeper than the walker went: read as deep as protobuf reads ------------------------------


def _deep_onnx(depth: int, location: str) -> bytes:
    """Subgraphs in If nodes, ``depth`` deep, the innermost with an initializer kept in ``location``."""
    tensor = helper.make_tensor("w", TensorProto.FLOAT, [1], [0.0])
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.float_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "g0", [], [out], [tensor])
    empty = helper.make_graph([], "empty", [], [out])
    for level in range(1, depth):
        node = helper.make_node("If", ["c"], ["y"], then_branch=graph, else_branch=empty)
        graph = helper.make_graph(
            [node], f"g{level}", [helper.make_tensor_value_info("c", TensorProto.BOOL, [])], [out]
        )
    return helper.make_model(graph).SerializeToString()


@pytest.mark.parametrize("depth", [25, 30])
async def test_external_data_nested_past_the_old_walker_limit_is_found(depth: int, tmp_path: Path) -> None:
    data = _deep_onnx(depth, "../../../etc/passwd")
    (tmp_path / "m.onnx").write_bytes(data)
    model = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)  # protobuf reads it, as deep as it is
    assert model.graph.node[0].op_type == "If"
    verdict = await verdict_of(OnnxVerifier(), "m.onnx", data)
    assert not verdict.ok and "../../../etc/passwd" in verdict.detail, verdict.detail


async def test_onnx_nested_past_the_walker_bound_is_refused_naming_it() -> None:
    # Graph -> node -> attribute -> graph ..., 50 times over (150 messages deep): beyond what protobuf reads.
    graph = b""
    for _ in range(50):
        graph = _field(1, _field(5, _field(6, graph)))
    verdict = await verdict_of(OnnxVerifier(), "m.onnx", _field(7, graph))
    assert not verdict.ok and "nested more than 128 deep (the scanner's bound)" in verdict.detail, verdict.detail


def _field(number: int, body: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(body)) + body


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)
