"""Many small files: artifact-import versus snapshot_download, and how fast an interrupted import stops.

The local hub (its own process) serves a repository of ``--files`` small JSON
files (folders of a thousand, as datasets shard them). Each tool downloads it
in a fresh child process: wall time, files per second, CPU seconds and peak
RSS (``wait4``). Then ours is interrupted by SIGTERM twice, as a container
runtime stops it: while files arrive, and while it commits (once its commit
intent appears); each time, how long it takes to exit after the signal, and
how long the next import takes to finish the rest.

    .venv/bin/python -m benchmarks.bench_many_files --files 200000 --rounds 1 --work /tmp/bench
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, Usage, run_child, start_hub

SNAPSHOT_WORKERS = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], local_dir=sys.argv[2], max_workers=int(sys.argv[3]))
"""


def interrupt(cmd: list[str], env: dict[str, str], dest: Path, *, when: str, after: float) -> tuple[float, int]:
    """Run ``cmd``, SIGTERM it (``when`` "files": ``after`` seconds in; "commit": once its commit intent
    exists); seconds from the signal to its exit, and its exit code."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    intent = dest / ".artifact-import" / "commit.json"
    while proc.poll() is None:
        if (when == "files" and time.monotonic() - started >= after) or (when == "commit" and intent.exists()):
            break
        time.sleep(0.01)
    if proc.poll() is not None:
        raise SystemExit(f"the import ended before it could be interrupted ({when})")
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait()
    return time.monotonic() - signalled, code


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=8, help="snapshot_download's max_workers (its default: 8)")
    parser.add_argument("--only", action="append", choices=["ours", "snapshot_download"])
    parser.add_argument("--no-interrupt", action="store_true")
    parser.add_argument(
        "--interrupt", action="append", choices=["files", "commit"], help="which interruptions (default: both)"
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        help="seconds into an import to SIGTERM it while files arrive (default: half of ours' median; with this, "
        "--rounds 0 runs only the interruptions)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    hub, url = start_hub(0, args.files, args.work / "hub", files={})
    print(f"hub ready with {args.files} files in {time.monotonic() - began:.0f}s", file=sys.stderr)
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("HF_TOKEN", None)
    ours = [str(Path(sys.executable).parent / "artifact-import"), "-q", "import", f"hf://{REPO}", "--to"]
    tools = {
        "ours": lambda dest: [*ours, dest],
        "snapshot_download": lambda dest: [sys.executable, "-c", SNAPSHOT_WORKERS, REPO, dest, str(args.workers)],
    }
    if args.only:
        tools = {name: tools[name] for name in args.only}
    results: dict[str, list[Usage]] = {name: [] for name in tools}
    stops: list[tuple[str, float, int, Usage]] = []
    load_before = os.getloadavg()
    try:
        for round_ in range(args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                where = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work))
                os.sync()
                usage = run_child(tools[name](str(where / "data")), {**env, "HF_HOME": str(where / "hf-home")})
                results[name].append(usage)
                print(
                    f"round {round_ + 1} {name}: {usage.seconds:.1f}s, {args.files / usage.seconds:.0f} files/s, "
                    f"CPU {usage.user:.1f}+{usage.system:.1f}s, peak RSS {usage.rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(where)
        if "ours" in tools and not args.no_interrupt:
            runs = results["ours"]
            after = args.stop_after or (statistics.median(u.seconds for u in runs) / 2 if runs else 0.0)
            if "files" in (args.interrupt or ("files",)) and not after:
                raise SystemExit("with --rounds 0, say when to interrupt the files with --stop-after")
            for when in args.interrupt or ("files", "commit"):
                where = Path(tempfile.mkdtemp(prefix=f"stop-{when}-", dir=args.work))
                run_env = {**env, "HF_HOME": str(where / "hf-home")}
                command = [*ours, str(where / "data")]
                took, code = interrupt(command, run_env, where / "data", when=when, after=after)
                rest = run_child(command, run_env)
                stops.append((when, took, code, rest))
                print(
                    f"SIGTERM while {when}: exited {code} {took:.2f}s after the signal; the next import finished "
                    f"in {rest.seconds:.1f}s, peak RSS {rest.rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(where)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    print(f"\n{args.files} small files, {args.rounds} round(s), median:\n")
    print("| tool | seconds | files/s | CPU s (user+sys) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        if not runs:
            continue
        seconds = statistics.median(u.seconds for u in runs)
        cpu = statistics.median(u.cpu for u in runs)
        print(
            f"| {name} | {seconds:.1f} | {args.files / seconds:.0f} | {cpu:.1f} | {max(u.rss for u in runs):.0f} |"
        )
    if len(results) == 2 and all(results.values()):
        ratios = [s.seconds / o.seconds for o, s in zip(results["ours"], results["snapshot_download"], strict=True)]
        print(f"\nours / snapshot_download files per second: {statistics.median(ratios):.2f}x")
    for when, took, code, rest in stops:
        print(
            f"SIGTERM while {when}: exit {code} after {took:.2f}s; next import finished the rest in "
            f"{rest.seconds:.1f}s (CPU {rest.cpu:.1f}s, peak RSS {rest.rss:.0f} MiB)"
        )
    print(f"\nload average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f} (2 cores, shared)")


if __name__ == "__main__":
    main()
