"""Verified import with ClamAV on, versus clamd's raw INSTREAM throughput and the staged route.

One generated repo (a large file plus small files) on the local hub, one
clamd (stock limits, test signature database), same run:

- **clamd raw**: the large file read from local disk and sent to clamd over
  INSTREAM in the same windows (64 MiB, 1 MiB overlap, 2 at a time) with
  blocking ``sendall``: what clamd itself can take, with no download at all.
- **ours**: ``artifact-import import --clamd ... --to DIR``: download, sha256,
  scan and write in one pass.
- **staged**: ``snapshot_download`` to disk, then scan the downloaded file as
  clamd raw does, then copy it to the destination: the route without a
  streaming pipeline.

    .venv/bin/python -m benchmarks.bench_clamav --large 1G --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, measure, start_hub
from tests.clamd import Clamd
from tests.hub import parse_size

WINDOW = 64 << 20
OVERLAP = 1 << 20
CHUNK = 1 << 20


def scan_file(path: str, port: int, concurrency: int = 2) -> None:
    """INSTREAM ``path`` to clamd in overlapping windows; raise unless every window is clean."""
    import socket

    size = Path(path).stat().st_size
    starts = list(range(0, max(size - OVERLAP, 1), WINDOW - OVERLAP))

    def window(start: int) -> str:
        end = min(start + WINDOW, size)
        with socket.create_connection(("127.0.0.1", port)) as s, open(path, "rb") as f:
            f.seek(start)
            s.sendall(b"zINSTREAM\0")
            left = end - start
            while left:
                data = f.read(min(CHUNK, left))
                s.sendall(struct.pack("!L", len(data)) + data)
                left -= len(data)
            s.sendall(struct.pack("!L", 0))
            reply = b""
            while not reply.endswith(b"\0"):
                reply += s.recv(256)
            return reply.decode()

    with ThreadPoolExecutor(concurrency) as pool:
        replies = list(pool.map(window, starts))
    if not all(r.strip("\0").endswith("OK") for r in replies):
        raise SystemExit(f"unexpected clamd replies: {replies}")


STAGED = """
import shutil, sys, tempfile
from pathlib import Path
from huggingface_hub import snapshot_download
from benchmarks.bench_clamav import scan_file
repo, port, dest, scratch = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
local = Path(snapshot_download(repo, local_dir=tempfile.mkdtemp(dir=scratch)))
for path in sorted(local.rglob("*")):
    rel = path.relative_to(local).as_posix()
    if path.is_file() and not rel.startswith(".cache/"):
        scan_file(str(path), port)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / rel)
"""

RAW = """
import sys
from benchmarks.bench_clamav import scan_file
scan_file(sys.argv[1], int(sys.argv[2]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=parse_size, default=parse_size("1G"))
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    hub, url = start_hub(args.large, args.small, args.work / "hub")
    clamd = Clamd(Path(tempfile.mkdtemp(prefix="clamd-", dir=args.work))).start()
    blob = max((args.work / "hub" / "blobs").iterdir(), key=lambda p: p.stat().st_size)
    bin_dir = Path(sys.executable).parent
    tools = {
        "clamd raw (large file from disk)": lambda dest, scratch: [
            sys.executable,
            "-c",
            RAW,
            str(blob),
            str(clamd.port),
        ],
        "ours": lambda dest, scratch: [
            str(bin_dir / "artifact-import"),
            "-q",
            "import",
            f"hf://{REPO}",
            "--to",
            dest,
            "--clamd",
            clamd.address,
        ],
        "staged (download, scan, copy)": lambda dest, scratch: [
            sys.executable,
            "-c",
            STAGED,
            REPO,
            str(clamd.port),
            dest,
            scratch,
        ],
    }
    env = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONPATH": str(ROOT)}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    try:
        for round_ in range(args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=args.work))
                dest = scratch / "dest"
                dest.mkdir()
                run_env = {**os.environ, **env, "HF_HOME": str(scratch / "hf-home")}
                seconds, rss = measure(tools[name](str(dest), str(scratch)), run_env)
                results[name].append((seconds, rss))
                print(f"round {round_ + 1} {name}: {seconds:.2f}s, peak RSS {rss:.0f} MiB", file=sys.stderr)
                shutil.rmtree(scratch, ignore_errors=True)
    finally:
        clamd.stop()
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    print(f"\n{args.large / 2**30:.2f} GiB file + {args.small} small files, {args.rounds} round(s), median:\n")
    print("| route | seconds | MiB/s of the large file | peak RSS (MiB) |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        medians[name] = seconds
        print(f"| {name} | {seconds:.2f} | {args.large / seconds / 2**20:.0f} | {max(r[1] for r in runs):.0f} |")
    raw, ours, staged = medians.values()
    print(f"\nours / clamd raw throughput: {raw / ours:.2f}x; ours / staged speed: {staged / ours:.2f}x")


if __name__ == "__main__":
    main()
