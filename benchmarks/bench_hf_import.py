"""Hugging Face Hub → local directory: artifact-import versus huggingface_hub.snapshot_download.

Both download the same generated repository from the same local hub (a
separate process), in the same run, each in a fresh child process whose
wall time and peak RSS (``wait4``) are recorded. Runs alternate between the
tools so that neither always gets the warmer page cache.

    .venv/bin/python -m benchmarks.bench_hf_import                 # 1 GiB + 40 small files, 3 rounds
    .venv/bin/python -m benchmarks.bench_hf_import --large 2G --rounds 1 --only ours   # RSS check
    .venv/bin/python -m benchmarks.bench_hf_import --into cache    # into the HF cache (hf-cache: vs cache_dir=)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.hub import parse_size, small_files

ROOT = Path(__file__).resolve().parent.parent
REPO = "bench/model"

SNAPSHOT = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2])
"""
SNAPSHOT_CACHE = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], cache_dir=sys.argv[2])
"""


def start_hub(
    large: int,
    small: int,
    data_dir: Path,
    *,
    files: dict[str, int] | None = None,
    rate: int = 0,
    cdn_url: str = "",
) -> tuple[subprocess.Popen[str], str]:
    """The local hub in a process of its own, serving ``REPO``: ``files`` (default: one ``large`` file) and
    ``small`` JSON files, each connection capped at ``rate`` bytes/s (0: no cap). ``cdn_url``: LFS files
    redirect there (nginx serving ``data_dir/blobs``, see ``tests/nginx.py``) rather than to the hub."""
    compile_package()  # every benchmark that starts a hub then runs ours
    files = files if files is not None else {"model.safetensors": large}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.hub",
            "serve",
            "--repo",
            REPO,
            "--data-dir",
            str(data_dir),
            *(arg for path, size in files.items() for arg in ("--file", f"{path}={size}")),
            "--small-files",
            str(small),
            "--rate",
            str(rate),
            "--cdn-url",
            cdn_url,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the local hub did not start")
    return proc, json.loads(line)["url"]


def compile_package() -> None:
    """Write artifact_import's bytecode, as ``pip install`` does.

    With ``PYTHONDONTWRITEBYTECODE`` set (as on the machines we measure on) and
    a source checkout, every run of ours would otherwise compile its modules
    again, a cost no installed copy pays and the other tools do not have.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "artifact_import")], check=True)


@dataclass(frozen=True)
class Usage:
    """What one child process took: wall seconds, peak RSS (MiB), CPU seconds in user and kernel mode."""

    seconds: float
    rss: float
    user: float
    system: float

    @property
    def cpu(self) -> float:
        return self.user + self.system


def run_child(cmd: list[str], env: dict[str, str]) -> Usage:
    """Run ``cmd`` to its end; its usage from ``wait4`` (CPU includes the processes it started and waited for,
    the kernel's accounting of a child)."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        assert proc.stderr is not None
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return Usage(elapsed, usage.ru_maxrss / 1024, usage.ru_utime, usage.ru_stime)


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS in MiB of one child process."""
    usage = run_child(cmd, env)
    return usage.seconds, usage.rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=parse_size, default=parse_size("1G"), help="size of the big file")
    parser.add_argument("--small", type=int, default=40, help="number of small files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["ours", "snapshot_download"], default=None)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument(
        "--into",
        choices=["dir", "cache"],
        default="dir",
        help="a directory (local_dir=), or the Hugging Face cache (ours: --to hf-cache:DIR; theirs: cache_dir=)",
    )
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    hub, url = start_hub(args.large, args.small, args.work / "hub")
    total = args.large + sum(len(data) for data in small_files(args.small).values() if isinstance(data, bytes))
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    bin_dir = Path(sys.executable).parent
    cache = args.into == "cache"
    tools = {
        "ours": lambda dest: [
            str(bin_dir / "artifact-import"),
            "-q",
            "import",
            f"hf://{REPO}",
            "--to",
            f"hf-cache:{dest}" if cache else dest,
        ],
        "snapshot_download": lambda dest: [sys.executable, "-c", SNAPSHOT_CACHE if cache else SNAPSHOT, REPO, dest],
    }
    if args.only:
        tools = {args.only: tools[args.only]}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    try:
        for round_ in range(args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                dest = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work))
                run_env = {**env, "HF_HOME": str(dest.parent / f"hf-home-{name}-{round_}")}
                seconds, rss = measure(tools[name](str(dest / "model")), run_env)
                results[name].append((seconds, rss))
                print(
                    f"round {round_ + 1} {name}: {seconds:.2f}s, {total / seconds / 2**20:.0f} MiB/s, "
                    f"peak RSS {rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(dest)
                shutil.rmtree(run_env["HF_HOME"], ignore_errors=True)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    where = "the HF cache" if cache else "a directory"
    print(
        f"\n{args.large / 2**30:.2f} GiB file + {args.small} small files into {where}, {args.rounds} round(s), "
        "median:\n"
    )
    print("| tool | seconds | MiB/s | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        medians[name] = seconds
        print(f"| {name} | {seconds:.2f} | {total / seconds / 2**20:.0f} | {rss:.0f} |")
    if len(medians) == 2:
        print(f"\nspeed ratio ours / snapshot_download: {medians['snapshot_download'] / medians['ours']:.2f}x")


if __name__ == "__main__":
    main()
