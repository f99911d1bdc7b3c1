"""The scan's cost is bounded whatever a file holds, and every bound is a refusal that names it.

Each crafted file here is small on the wire and was, before these bounds,
either gigabytes of memory or an hour of a core, and then a pass.
"""

from __future__ import annotations

import asyncio
import bz2
import gc
import lzma
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from artifact_import import ArtifactFile
from artifact_import.verifiers.contentscan import scan
from artifact_import.verifiers.gguf import GgufVerifier
from artifact_import.verifiers.onnx import OnnxVerifier
from artifact_import.verifiers.pickle import PickleVerifier
from artifact_import.verifiers.reader import Bound, Budget, BytesReader
from artifact_import.verifiers.safetensors import SafetensorsVerifier

from .conftest import ROOT, repo_name, verdict_of
from .hub import LocalHub


def nested_marks(levels: int, per_level: int) -> bytes:
    """MARK after MARK, each level holding objects: small per level, millions in all."""
    return b"\x80\x02" + (b"(" + b"N" * per_level) * levels


def tiny_pickles(count: int) -> bytes:
    return b"\x80\x02N." * count


def bomb(compress: object) -> bytes:
    """A pickle of one BINBYTES8 of 1 TiB, the bytes being zeros: 64 MiB streams of them, one after another
    (bz2.open and lzma.open read concatenated streams as one)."""
    assert callable(compress)
    head = compress(b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40))
    return head + compress(bytes(64 << 20)) * 32


@pytest.mark.parametrize(
    ("name", "data", "bound"),
    [
        # 1.2 million objects spread over 60,000 MARK levels, 20 each: no level is large.
        ("marks.pkl.bz2", bz2.compress(nested_marks(60_000, 20)), "live objects in one pickle"),
        # 30 million pickles of one opcode each, one after another.
        ("many.pkl", bz2.compress(tiny_pickles(30_000_000)), "pickles one after another"),
        # 2 GiB of zeros in a few kB of bz2 (and of xz): expansion past the ratio bound.
        ("bomb.joblib", bomb(bz2.compress), "ratio bound"),
        ("bomb.pkl.xz", bomb(lzma.compress), "ratio bound"),
    ],
    ids=["nested-marks", "tiny-pickles", "bz2-bomb", "xz-bomb"],
)
async def test_each_bound_is_a_refusal_naming_it(name: str, data: bytes, bound: str) -> None:
    assert len(data) < 1 << 20
    verdict = await verdict_of(PickleVerifier(), name, data)
    assert not verdict.ok and bound in verdict.detail and "bound" in verdict.detail, verdict.detail


def test_the_scan_stops_at_its_cpu_time_bound() -> None:
    # A legitimate-looking stream of a hundred million cheap opcodes (push None, pop it).
    data = b"\x80\x02" + b"N0" * 50_000_000 + b"N."
    with pytest.raises(Bound, match=r"took more than 0\.5 CPU seconds"):
        scan(BytesReader(data), "long.pkl", Budget(cpu_seconds=0.5))


async def test_a_decompression_bound_is_charged_against_the_bytes_of_the_file() -> None:
    # One layer of gzip never meets the ratio bound: deflate itself stops at 1032:1.
    import gzip

    data = gzip.compress(bytes(256 << 20), mtime=0)
    verdict = await verdict_of(PickleVerifier(), "zeros.pkl.gz", data, chunk=1 << 20)
    assert verdict.ok, verdict.detail


# --- memory stays flat, whatever the file: measured on the CLI's own peak RSS --------------------------------


def _safetensors_with_header(megabytes: int) -> bytes:
    """A valid safetensors file whose header is ``megabytes`` MB: many tiny tensors."""
    entry = b'"t%07d":{"dtype":"U8","shape":[1],"data_offsets":[%d,%d]}'
    count = megabytes * 1_000_000 // 55
    header = b"{" + b",".join(entry % (i, i, i + 1) for i in range(count)) + b"}"
    return struct.pack("<Q", len(header)) + header + bytes(count)


def _gguf_with_strings(count: int, size: int) -> bytes:
    kvs = b"".join(
        struct.pack("<Q", 6) + b"key%03d" % i + struct.pack("<I", 8) + struct.pack("<Q", size) + b"x" * size
        for i in range(count)
    )
    return b"GGUF" + struct.pack("<IQQ", 3, 0, count) + kvs


def _peak_rss_mib(*args: str) -> tuple[int, float, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", *args], cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE
    )
    peak = 0
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak = max(peak, next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    _, err = proc.communicate()
    return proc.returncode, peak / 1024, err.decode()


@pytest.mark.slow
def test_large_safetensors_and_gguf_headers_import_in_flat_memory(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("headers")
    files = {f"shard-{i}.safetensors": _safetensors_with_header(20) for i in range(2)}
    files.update({f"model-{i}.gguf": _gguf_with_strings(4, 24 << 20) for i in range(2)})
    hub.create_repo(repo, files)
    gc.collect()
    code, peak, err = _peak_rss_mib("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json")
    assert code == 0, err
    # Before: ~200 MB per parsed 20 MB header and every string kept, 4 files at once.
    assert peak < 400, f"peak RSS {peak:.0f} MiB for two 20 MB safetensors headers and 192 MiB of GGUF strings"


async def test_the_safetensors_tensor_count_is_bounded() -> None:
    from artifact_import.verifiers import safetensors

    old = safetensors.MAX_TENSORS
    safetensors.MAX_TENSORS = 10
    try:
        data = _safetensors_with_header(1)
        verdict = await verdict_of(SafetensorsVerifier(), "m.safetensors", data, chunk=1 << 16)
    finally:
        safetensors.MAX_TENSORS = old
    assert not verdict.ok and "more than 10 tensors in one header (the scanner's bound)" in verdict.detail


async def test_gguf_counts_beyond_any_model_are_a_bound() -> None:
    data = b"GGUF" + struct.pack("<IQQ", 3, 0, 1 << 20)
    verdict = await verdict_of(GgufVerifier(), "m.gguf", data)
    assert not verdict.ok and "bound" in verdict.detail, verdict.detail


async def test_a_session_whose_parser_failed_leaves_no_unretrieved_exception() -> None:
    # The cause of "Future exception was never retrieved" under a one-line error: a parser that failed on
    # one file while another file failed first, so that its session was cancelled, not finished.
    reported: list[str] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx["message"]))
    session = OnnxVerifier().start(ArtifactFile("m.onnx", 10))
    await session.feed(b"\xff" * 10)  # wire type 7: the parser fails at once
    for _ in range(100):
        await asyncio.sleep(0.01)
    await session.cancel()
    del session
    gc.collect()
    await asyncio.sleep(0)
    assert reported == []


@pytest.mark.slow
def test_a_corrupted_file_fails_alone_under_load(hub: LocalHub, tmp_path: Path) -> None:
    """test_cli's corrupted-byte import, many times, with the other core kept busy: one line, no traceback."""
    from .test_cli import FILES

    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        repo = repo_name("corrupt")
        hub.create_repo(repo, FILES)
        hub.faults.flip_byte["model.safetensors"] = 12345
        for i in range(int(os.environ.get("ARTIFACT_IMPORT_LOAD_RUNS", "12"))):
            code, _, err = _peak_rss_mib("import", f"hf://{repo}", "--to", str(tmp_path / f"m{i}"), "--json")
            assert code == 3 and "Traceback" not in err and "never retrieved" not in err, err
            assert not (tmp_path / f"m{i}").exists()
    finally:
        burner.kill()
        burner.wait()


async def test_a_text_argument_of_megabytes_is_passed_over_not_refused() -> None:
    # Read raw (as pickle.load would), a checkpoint of zero tensors is a PERSID whose "line" runs for megabytes.
    from .modelfiles import _zip

    zeros = _zip({"archive/data.pkl": b"\x80\x02}q\x00.", "archive/data/0": bytes(4 << 20), "archive/version": b"3\n"})
    assert (await verdict_of(PickleVerifier(), "pytorch_model.bin", zeros, chunk=1 << 20)).ok
    # And what follows such a line is still read: a long persistent id does not hide an import.
    hiding = b"\x80\x02P" + b"x" * (3 << 20) + b"\ncposix\nsystem\n."
    verdict = await verdict_of(PickleVerifier(), "model.pkl", hiding, chunk=1 << 20)
    assert not verdict.ok and verdict.data["unsafe"] == ["posix.system"], verdict.detail
