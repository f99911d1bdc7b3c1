"""Model-file scanners side by side: ours, ModelAudit, picklescan (and --strict), modelscan and fickling.

One corpus, built by this harness in ``benchmarks/work/scanners``:

- **hostile**: every sample of ``tests/modelfiles.py``, ``tests/bypasses.py`` and the TorchScript and NeMo
  ones, each kept only once its loader (``pickle.load``, ``torch.load``, ``torch.jit.load``,
  ``joblib.load``, ``np.load``, ``zipfile`` + ``pickle``, Hydra's ``instantiate``) has run its payload
  (writing a marker file) in a child process;
- **benign**: the checkpoints torch wrote (``tests/data/checkpoints``, and with ``--torch`` larger ones made
  now), arrays and pickles numpy, joblib and pickle write;
- **everyday**: real files from this machine's install (images, fonts, PDFs, gzip'd docs, licences,
  catalogs, certificates, source) and files the standard library writes (WAV, SQLite, tar, zip, READMEs).

Each tool runs once over the whole corpus in a fresh child process; wall seconds and peak RSS come from
``wait4``. A file counts as flagged when the tool reports it dangerous (ours: a failed verdict under the
default policies; ModelAudit: a critical or warning issue; picklescan: a dangerous import, with ``--strict``
a suspicious one too; modelscan: any issue; fickling: ``is_likely_safe`` False).

    python -m venv .venv-bench && .venv-bench/bin/pip install -e '.[test,bench]' torch==2.13.0
    .venv-bench/bin/python -m benchmarks.bench_scanners --torch
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks.bench_hf_import import ROOT

OURS = """
import asyncio, json, os, sys
from artifact_import import ArtifactFile
from artifact_import.config import VerifySettings
from artifact_import.verifiers import build_verifiers

async def verdicts(root, path):
    name = os.path.relpath(path, root)
    file = ArtifactFile(name, os.path.getsize(path))
    sessions = [v.start(file) for v in build_verifiers(VerifySettings()) if v.applies_to(file)]
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            await asyncio.gather(*(s.feed(chunk) for s in sessions))
    return [await s.finish() for s in sessions]

async def main(root):
    flagged = {}
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            bad = [v.detail for v in await verdicts(root, path) if not v.ok]
            flagged[os.path.relpath(path, root)] = bad[0][:200] if bad else None
    print(json.dumps(flagged))

asyncio.run(main(sys.argv[1]))
"""

FICKLING = """
import json, os, sys, fickling
root = sys.argv[1]
flagged = {}
for folder, _, names in sorted(os.walk(root)):
    for name in sorted(names):
        path = os.path.join(folder, name)
        try:
            flagged[os.path.relpath(path, root)] = None if fickling.is_likely_safe(path) else "not likely safe"
        except Exception as exc:
            flagged[os.path.relpath(path, root)] = None  # could not read it: reported as an error, not a finding
print(json.dumps(flagged))
"""


def _python_tool(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# --- the corpus ----------------------------------------------------------------------------------------


def build_corpus(work: Path, with_torch: bool) -> dict[str, list[str]]:
    from tests.bypasses import JIT_LOAD, bypasses, torchscript_setstate
    from tests.everyday import everyday
    from tests.modelfiles import benign, malicious
    from tests.test_format_bypasses import NEMO_RESTORE, _evil_config, nemo

    root = work / "corpus"
    shutil.rmtree(root, ignore_errors=True)
    proof = work / "proof"
    proof.mkdir(parents=True, exist_ok=True)
    marker = proof / "ran"
    hostile = [(s.name, s.data, s.loader) for s in malicious(str(marker)) + bypasses(str(marker)) if s.loader]
    hostile.append(("torchscript_setstate.pt", torchscript_setstate(), JIT_LOAD))
    hostile.append(("asr.nemo", nemo(_evil_config(str(marker))), NEMO_RESTORE))
    kinds: dict[str, list[str]] = {"hostile": [], "unproven": [], "benign": [], "everyday": []}
    for name, data, loader in hostile:
        path = root / "hostile" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        for left in (marker, proof / "torchscript-payload-ran"):
            left.unlink(missing_ok=True)
        code = f"path = {str(path)!r}\n{loader}"
        subprocess.run([sys.executable, "-c", code], cwd=proof, capture_output=True, timeout=300, check=False)
        ran = marker.exists() or (proof / "torchscript-payload-ran").exists()
        if not ran:
            path.rename(root / "hostile" / f"unproven-{name}")
        kinds["hostile" if ran else "unproven"].append(f"hostile/{name if ran else f'unproven-{name}'}")
    for sample in benign():
        _put(root, kinds, "benign", sample.name, sample.data)
    if with_torch:
        for name, data in _torch_checkpoints(work):
            _put(root, kinds, "benign", name, data)
    for sample in everyday():
        _put(root, kinds, "everyday", sample.name, sample.data)
    return kinds


def _put(root: Path, kinds: dict[str, list[str]], kind: str, name: str, data: bytes) -> None:
    path = root / kind / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    kinds[kind].append(f"{kind}/{name}")


def _torch_checkpoints(work: Path) -> list[tuple[str, bytes]]:
    """Checkpoints torch writes now: a 256 MiB state dict (zip and legacy), a training checkpoint."""
    code = """
import io, sys, torch
from collections import OrderedDict
torch.manual_seed(0)
sd = OrderedDict((f"layers.{i}.weight", torch.randn(1024, 1024)) for i in range(64))
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
opt = torch.optim.AdamW(model.parameters())
model(torch.randn(4, 64)).sum().backward(); opt.step()
out = sys.argv[1]
torch.save(sd, out + "/pytorch_model.bin")
torch.save(sd, out + "/legacy_model.bin", _use_new_zipfile_serialization=False)
torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, out + "/training_state.pt")
"""
    out = work / "torch"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code, str(out)], check=True, timeout=600)
    return [(f"torch/{p.name}", p.read_bytes()) for p in sorted(out.iterdir())]


# --- the tools -----------------------------------------------------------------------------------------


def tools() -> dict[str, list[str]]:
    return {
        "ours": _python_tool(OURS),
        "ModelAudit": [_bin("modelaudit"), "scan", "{root}", "--format", "json", "--no-cache", "-o", "{out}"],
        "picklescan": [_bin("picklescan"), "--path", "{root}"],
        "picklescan --strict": [_bin("picklescan"), "--strict", "--path", "{root}"],
        "modelscan": [_bin("modelscan"), "-p", "{root}", "-r", "json", "-o", "{out}"],
        "fickling": _python_tool(FICKLING),
    }


def run_tool(name: str, cmd: list[str], root: Path, out: Path) -> tuple[float, float, dict[str, str | None], str]:
    cmd = [part.replace("{root}", str(root)).replace("{out}", str(out)) for part in cmd]
    if name in ("ours", "fickling"):
        cmd.append(str(root))
    out.unlink(missing_ok=True)
    # ModelAudit's telemetry would wait on a network that is not there: measure the scanner, not that.
    env = {**os.environ, "PROMPTFOO_DISABLE_TELEMETRY": "1", "NO_COLOR": "1"}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = [0]
    watcher = threading.Thread(target=_watch_peak, args=(proc, peak), daemon=True)
    watcher.start()
    output = proc.communicate()[0].decode("utf-8", "replace")
    elapsed = time.monotonic() - started
    watcher.join()
    return elapsed, peak[0] / 1024, parse(name, output, out, root), output


def _watch_peak(proc: subprocess.Popen[bytes], peak: list[int]) -> None:
    """The child's own peak RSS (VmHWM: since its exec; wait4's ru_maxrss would count this process's pages too)."""
    while proc.poll() is None:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak[0] = max(peak[0], next(int(line.split()[1]) for line in status.splitlines() if line[:6] == "VmHWM:"))
        except (OSError, StopIteration):
            pass
        time.sleep(0.02)


def parse(
    name: str, output: str, out: Path, root: Path, severities: tuple[str, ...] = ("critical", "warning")
) -> dict[str, str | None]:
    """Per file (relative to the corpus root), what the tool flagged it for, or None."""
    flagged: dict[str, str | None] = {}
    if name in ("ours", "fickling"):
        return json.loads(output.strip().splitlines()[-1])  # type: ignore[no-any-return]
    if name.startswith("picklescan"):
        for line in output.splitlines():
            match = re.match(rf"^{re.escape(str(root))}/(.+?): (dangerous import .* FOUND|.*suspicious.*)$", line)
            if match and ("dangerous" in match.group(2) or "--strict" in name):
                flagged[match.group(1)] = match.group(2)[:200]
        return flagged
    report = json.loads(out.read_text()) if out.exists() else {}
    if name == "ModelAudit":
        for issue in report.get("issues", []):
            where = str(issue.get("location") or "").split(" (")[0]
            if issue.get("severity") in severities and where.startswith(str(root)):
                flagged.setdefault(os.path.relpath(where, root), str(issue.get("message"))[:200])
    else:  # modelscan
        for issue in report.get("issues", []):
            source = str(issue.get("source", ""))
            source = os.path.relpath(source, root) if os.path.isabs(source) else source
            flagged.setdefault(source.split(":")[0], str(issue.get("description"))[:200])
    return flagged


def _caught(path: str, flagged: dict[str, str | None]) -> bool:
    # Tools that name a member report "file.pt:archive/data.pkl" or a path inside the file: the file is flagged.
    return any(f == path or f.startswith(path + ":") or f.startswith(path + "/") for f, why in flagged.items() if why)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work" / "scanners")
    parser.add_argument("--torch", action="store_true", help="add checkpoints torch writes now (256 MiB)")
    parser.add_argument("--only", action="append", help="run only these tools")
    args = parser.parse_args()

    kinds = build_corpus(args.work, args.torch)
    root = args.work / "corpus"
    total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    print(
        f"corpus: {len(kinds['hostile'])} executing hostile samples ({len(kinds['unproven'])} more that no loader "
        f"ran, not counted), {len(kinds['benign'])} benign model files, {len(kinds['everyday'])} everyday files, "
        f"{total / 2**20:.0f} MiB"
    )
    rows = []
    results = {}
    for name, cmd in tools().items():
        if args.only and name not in args.only:
            continue
        out = args.work / f"{name.split()[0]}.json"
        elapsed, rss, flagged, output = run_tool(name, cmd, root, out)
        readings = [(name, flagged)]
        if name == "ModelAudit":
            readings = [("ModelAudit (critical or warning)", flagged)]
            readings.append(("ModelAudit (critical only)", parse(name, output, out, root, ("critical",))))
        for label, found in readings:
            missed = [p for p in kinds["hostile"] if not _caught(p, found)]
            alarms = [p for p in kinds["benign"] + kinds["everyday"] if _caught(p, found)]
            results[label] = {"seconds": elapsed, "peak_rss_mib": rss, "missed": missed, "false_alarms": alarms}
            rows.append(
                f"| {label} | {len(kinds['hostile']) - len(missed)}/{len(kinds['hostile'])} | "
                f"{len(alarms)}/{len(kinds['benign']) + len(kinds['everyday'])} | {elapsed:.1f} | {rss:.0f} |"
            )
    (args.work / "results.json").write_text(json.dumps(results, indent=1))
    print("| tool | executing samples caught | false alarms | seconds | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"(per file: {args.work / 'results.json'})")


if __name__ == "__main__":
    main()
