"""How long a command takes to start: ``artifact-import --version`` / ``--help`` versus ``hf version``; and
what a tiny import costs (start-up dominates it): ``artifact-import import`` versus ``hf download``.

Each command runs ``--runs`` times in a fresh process; the median wall time (and, for the tiny import, the
median CPU seconds, user + system, from ``wait4``) is reported. The tiny import fetches three small JSON
files from the local hub (a process of its own), into a fresh directory with a fresh ``HF_HOME`` (no saved
token) each run; the two tools alternate.

    .venv/bin/python -m benchmarks.bench_startup
    .venv/bin/python -m benchmarks.bench_startup --only import
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_hf_import import REPO, Usage, compile_package, run_child, start_hub

BIN = Path(sys.executable).parent


def commands(runs: int) -> None:
    commands = {
        "artifact-import --version": [str(BIN / "artifact-import"), "--version"],
        "artifact-import import --help": [str(BIN / "artifact-import"), "import", "--help"],
        "artifact-import verify --help": [str(BIN / "artifact-import"), "verify", "--help"],
        "hf version": [str(BIN / "hf"), "version"],
    }
    print("| command | median seconds |")
    print("|---|---:|")
    for name, cmd in commands.items():
        times = []
        for _ in range(runs):
            started = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.monotonic() - started)
        print(f"| `{name}` | {statistics.median(times):.3f} |")


def tiny_import(runs: int, small: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    hub, url = start_hub(0, small, work / "hub", files={})
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH"):
        env.pop(name, None)
    tools = {
        "artifact-import import": lambda dest: [
            str(BIN / "artifact-import"),
            "-q",
            "import",
            f"hf://{REPO}",
            "--to",
            dest,
        ],
        "hf download": lambda dest: [str(BIN / "hf"), "download", REPO, "--local-dir", dest, "--quiet"],
    }
    results: dict[str, list[Usage]] = {name: [] for name in tools}
    try:
        for run in range(runs):
            for name in list(tools) if run % 2 == 0 else list(reversed(tools)):
                dest = work / f"out-{run}"
                home = work / f"hf-home-{run}"
                results[name].append(run_child(tools[name](str(dest)), {**env, "HF_HOME": str(home)}))
                shutil.rmtree(dest, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{small} small files from the local hub, {runs} runs, median:\n")
    print("| command | wall seconds | CPU seconds (user + sys) | user | sys |")
    print("|---|---:|---:|---:|---:|")
    for name, usages in results.items():
        print(
            f"| `{name}` | {statistics.median(u.seconds for u in usages):.3f} "
            f"| {statistics.median(u.cpu for u in usages):.3f} "
            f"| {statistics.median(u.user for u in usages):.3f} "
            f"| {statistics.median(u.system for u in usages):.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--only", choices=["commands", "import"], default=None)
    parser.add_argument("--small", type=int, default=3, help="small files in the tiny import")
    args = parser.parse_args()
    compile_package()
    if args.only != "import":
        commands(args.runs)
    if args.only != "commands":
        tiny_import(args.runs, args.small)


if __name__ == "__main__":
    main()
