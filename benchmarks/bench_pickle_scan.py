"""Pickle scan throughput: our streaming verifier versus picklescan, on the same files, same run.

Two generated files (in ``benchmarks/work``):

- **one-array pickle**: ``pickle.dump({"w": <one float32 numpy array>}, protocol=4)``, the shape
  that took the previous scanner quadratic time;
- **state dict**: a checkpoint laid out as ``torch.save`` writes it (a zip whose members carry
  data descriptors: ``data.pkl`` naming 256 storages, then ``data/0`` ... ``data/255``).

Each tool runs in a fresh child process over the file on disk (page cache warm after the first
round); wall time and peak RSS come from ``wait4``:

- **ours**: the file fed through ``PickleVerifier`` in 1 MiB chunks, as an import feeds it;
- **picklescan**: ``picklescan --path FILE`` (the scanner the Hub and many pipelines run).

    .venv/bin/pip install -e '.[test,bench]'
    .venv/bin/python -m benchmarks.bench_pickle_scan --size 1G --rounds 3
"""

from __future__ import annotations

import argparse
import io
import os
import pickle
import statistics
import subprocess
import sys
import time
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

from benchmarks.bench_hf_import import ROOT, measure
from tests.hub import parse_size

OURS = """
import asyncio, sys, time
from artifact_import import ArtifactFile
from artifact_import.verifiers.pickle import PickleVerifier

async def main(path):
    started = time.monotonic()
    session = PickleVerifier().start(ArtifactFile(path, None))
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            await session.feed(chunk)
    verdict = await session.finish()
    if not verdict.ok:
        raise SystemExit(verdict.detail)
    print(time.monotonic() - started)

asyncio.run(main(sys.argv[1]))
"""

PICKLESCAN = """
import sys, time
from picklescan.scanner import scan_file_path
started = time.monotonic()
result = scan_file_path(sys.argv[1])
print(time.monotonic() - started)
if result.scan_err or result.infected_files:
    raise SystemExit(f"picklescan: error={result.scan_err} infected={result.infected_files}")
"""


def one_array(path: Path, size: int) -> None:
    import numpy as np

    array = np.random.default_rng(0).random(size // 8)
    with path.open("wb") as f:
        pickle.dump({"w": array}, f, protocol=4)


class _Unseekable(io.RawIOBase):
    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        return self.f.write(b)


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, storage: _Storage) -> None:
        self.storage = storage

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return (rebuild, (self.storage, 0, (self.storage.numel,), (1,), False, OrderedDict()))


def _fake_torch() -> type:
    """Enough of ``torch`` for pickle to name it as torch.save does (torch itself is not installed)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: object) -> None: ...

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    float_storage = type("FloatStorage", (), {"__module__": "torch"})
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch.FloatStorage = float_storage  # type: ignore[attr-defined]
    sys.modules.update({"torch": torch, "torch._utils": utils})
    return float_storage


def state_dict(path: Path, size: int, tensors: int = 256) -> None:
    """A torch.save layout: data.pkl refers to storages by persistent id; each storage is a member."""
    import numpy as np

    float_storage = _fake_torch()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj: object) -> object:
            if isinstance(obj, _Storage):
                return ("storage", float_storage, obj.key, "cpu", obj.numel)
            return None

    per = size // tensors
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump(
        OrderedDict((f"layer{i}.weight", _Tensor(_Storage(str(i), per // 4))) for i in range(tensors))
    )
    rng = np.random.default_rng(0)
    with path.open("wb") as raw, zipfile.ZipFile(_Unseekable(raw), "w") as z:  # type: ignore[arg-type]
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/version", b"3\n")
        for i in range(tensors):
            z.writestr(f"archive/data/{i}", rng.bytes(per))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    files = {"one-array pickle": args.work / "one_array.pkl", "state dict (zip)": args.work / "state_dict.pt"}
    # Made in a child: a child forked from a parent holding the data would count it in its own peak RSS.
    make = "import sys; from benchmarks.bench_pickle_scan import one_array, state_dict as sd; from pathlib import Path"
    make += f"; one_array(Path(sys.argv[1]), {args.size}); sd(Path(sys.argv[2]), {args.size})"
    measure([sys.executable, "-c", make, *map(str, files.values())], {"PYTHONPATH": str(ROOT)})
    tools = {"ours": OURS, "picklescan": PICKLESCAN}
    env = {"PYTHONPATH": str(ROOT)}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    try:
        for round_ in range(args.rounds):
            for label, path in files.items():
                order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
                for name in order:
                    seconds, scan, rss = run([sys.executable, "-c", tools[name], str(path)], env)
                    results.setdefault((label, name), []).append((seconds, scan, rss))
                    print(
                        f"round {round_ + 1} {label} {name}: {seconds:.2f}s ({scan:.2f}s scanning), "
                        f"peak RSS {rss:.0f} MiB",
                        file=sys.stderr,
                    )
    finally:
        for path in files.values():
            path.unlink(missing_ok=True)
    print(f"\n{args.size / 2**30:.2f} GiB files, {args.rounds} round(s), median:\n")
    print("| file | tool | process seconds | scan seconds | scan MiB/s | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    medians: dict[tuple[str, str], float] = {}
    for (label, name), runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        scan = medians[(label, name)] = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(f"| {label} | {name} | {seconds:.2f} | {scan:.2f} | {args.size / scan / 2**20:.0f} | {rss:.0f} |")
    for label in files:
        ratio = medians[(label, "ours")] / medians[(label, "picklescan")]
        print(f"\n{label}: ours / picklescan scan time: {ratio:.2f}x (target: at most 2x)")


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, float]:
    """Wall seconds, the seconds the child says it spent scanning, and its peak RSS in MiB."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    assert proc.stdout is not None and proc.stderr is not None
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[:3]} failed: {proc.stderr.read().decode()[-2000:]}")
    return elapsed, float(proc.stdout.read().decode().split()[-1]), usage.ru_maxrss / 1024


if __name__ == "__main__":
    main()
