"""How long a command takes to start: ``artifact-import --version`` / ``--help`` versus ``hf version``.

Each command runs ``--runs`` times in a fresh process; the median wall time is reported.

    .venv/bin/python -m benchmarks.bench_startup
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.bench_hf_import import compile_package

BIN = Path(sys.executable).parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    compile_package()
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
        for _ in range(args.runs):
            started = time.monotonic()
            subprocess.run(cmd, check=True, capture_output=True)
            times.append(time.monotonic() - started)
        print(f"| `{name}` | {statistics.median(times):.3f} |")


if __name__ == "__main__":
    main()
