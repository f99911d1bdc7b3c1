"""Many connections per file: artifact-import versus aria2c -x16, snapshot_download and curl.

The local hub (its own process) caps every connection at ``--rate`` bytes/s,
as CDNs do; every tool downloads the same repository from it in the same
run, each in a fresh child process (wall time and peak RSS from ``wait4``),
in alternating order.

    .venv/bin/python -m benchmarks.bench_parallel --scenario one      # 1 GiB, 50 MiB/s per connection
    .venv/bin/python -m benchmarks.bench_parallel --scenario shards   # 8 x 256 MiB, 50 MiB/s per connection
    .venv/bin/python -m benchmarks.bench_parallel --scenario lan      # 1 GiB, no cap

aria2c runs as ``hfd.sh`` runs it (``-x16 -s16 -j5 -k1M``); curl fetches the
files one after the other over one connection each. Only artifact-import
verifies what it wrote (sha256 of every file), and only it makes the file
durable (fsync) before it becomes visible; so each tool's time is given
twice: when it exits, and when its files are on disk (plus a ``sync`` of the
files it wrote, timed right after it). The disk is synced, untimed, before
each run, so that no tool pays for the writeback another left.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, SNAPSHOT, measure, start_hub
from tests.hub import parse_size

MiB = 1 << 20
SCENARIOS: dict[str, tuple[dict[str, int], int]] = {
    "one": ({"model.safetensors": 1 << 30}, 50 * MiB),
    "shards": ({f"model-{i:05d}-of-00008.safetensors": 256 * MiB for i in range(1, 9)}, 50 * MiB),
    "lan": ({"model.safetensors": 1 << 30}, 0),
}

CURL = """
import subprocess, sys
url, dest, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
for path in paths:
    subprocess.run(["curl", "-sSfL", "--create-dirs", "-o", f"{dest}/{path}", f"{url}/{path}"], check=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="one")
    parser.add_argument("--rate", type=parse_size, default=None, help="override the per-connection cap, e.g. 50M")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--warmup", type=int, default=1, help="untimed rounds first (the freshly generated hub is slower at first)"
    )
    parser.add_argument("--only", action="append", choices=["ours", "aria2c", "snapshot_download", "curl"])
    parser.add_argument("--connections", type=int, default=None, help="ours: --connections")
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()

    files, rate = SCENARIOS[args.scenario]
    rate = args.rate if args.rate is not None else rate
    args.work.mkdir(parents=True, exist_ok=True)
    hub, url = start_hub(0, 0, args.work / "hub", files=files, rate=rate)
    total = sum(files.values())
    resolve = f"{url}/{REPO}/resolve/main"
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    bin_dir = Path(sys.executable).parent
    ours_extra = ["--connections", str(args.connections)] if args.connections else []

    def aria2c(dest: str) -> list[str]:
        Path(dest).mkdir(parents=True)
        listing = Path(dest).parent / f"{Path(dest).parent.name}.aria2-input"
        listing.write_text("".join(f"{resolve}/{path}\n  out={path}\n" for path in files))
        return [
            "aria2c", "--console-log-level=error", "--file-allocation=none", "--summary-interval=0",
            "-x16", "-s16", "-j5", "-k1M", "-d", dest, "-i", str(listing),
        ]  # fmt: skip

    tools = {
        "ours": lambda dest: [
            str(bin_dir / "artifact-import"),
            "-q",
            "import",
            f"hf://{REPO}",
            "--to",
            dest,
            *ours_extra,
        ],
        "aria2c": aria2c,
        "snapshot_download": lambda dest: [sys.executable, "-c", SNAPSHOT, REPO, dest],
        "curl": lambda dest: [sys.executable, "-c", CURL, resolve, dest, *files],
    }
    if args.only:
        tools = {name: tools[name] for name in args.only}
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in tools}
    try:
        for round_ in range(-args.warmup, args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                where = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work))
                run_env = {**env, "HF_HOME": str(where / "hf-home")}
                # Untimed: what the previous tool left for the disk to write is written now, not during the
                # next tool's run (the tools that do not fsync would otherwise bill the next one).
                os.sync()
                seconds, rss = measure(tools[name](str(where / "model")), run_env)
                written = [str(p) for p in (where / "model").rglob("*") if p.is_file()]
                durable = seconds + measure(["sync", *written], run_env)[0]
                if round_ >= 0:
                    results[name].append((seconds, rss, durable))
                print(
                    f"{'round' if round_ >= 0 else 'warm-up'} {round_ + 1} {name}: "
                    f"{seconds:.2f}s ({durable:.2f}s to disk), "
                    f"{total / seconds / MiB:.0f} MiB/s, peak RSS {rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(where)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    cap = f"{rate / MiB:.0f} MiB/s per connection" if rate else "no cap"
    print(f"\n{len(files)} file(s), {total / MiB:.0f} MiB, {cap}, {args.rounds} round(s), median:\n")
    print("| tool | seconds | MiB/s | peak RSS (MiB) | ours is | seconds to disk | ours is |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    medians = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    durables = {name: statistics.median(r[2] for r in runs) for name, runs in results.items()}

    def ratio(times: dict[str, float], name: str) -> str:
        return f"{times[name] / times['ours']:.2f}x as fast" if "ours" in times and name != "ours" else ""

    for name, runs in results.items():
        rss = max(r[1] for r in runs)
        print(
            f"| {name} | {medians[name]:.2f} | {total / medians[name] / MiB:.0f} | {rss:.0f} | "
            f"{ratio(medians, name)} | {durables[name]:.2f} | {ratio(durables, name)} |"
        )


if __name__ == "__main__":
    main()
