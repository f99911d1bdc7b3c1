"""Hugging Face Hub → S3: artifact-import versus snapshot_download + minio's fput_object.

Same generated repo on the same local hub, in the same run. Each tool runs in
a fresh child process (wall time and peak RSS from ``wait4``) against a fresh
S3 server: JuiceFS's gateway (MinIO's S3 front end over a local directory,
the real server of the tests) by default, or moto (which keeps objects in
memory, ~5x their size) with ``--server moto``. The two-step route is what people script today: download the
snapshot to disk, then upload every file with ``fput_object``.

    .venv/bin/python -m benchmarks.bench_hf_to_s3 --large 1G --rounds 3
    .venv/bin/python -m benchmarks.bench_hf_to_s3 --large 512M --server moto
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, measure, start_hub
from tests.hub import parse_size, small_files
from tests.s3server import S3Server

TWO_STEP = """
import os, sys, tempfile
from pathlib import Path
from huggingface_hub import snapshot_download
from minio import Minio
repo, bucket, endpoint = sys.argv[1], sys.argv[2], sys.argv[3]
local = Path(snapshot_download(repo, local_dir=tempfile.mkdtemp(dir=sys.argv[4])))
client = Minio(endpoint, os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"], secure=False,
               region="us-east-1")
for path in sorted(local.rglob("*")):
    rel = path.relative_to(local).as_posix()
    if path.is_file() and not rel.startswith(".cache/"):
        client.fput_object(bucket, f"models/{rel}", str(path))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=parse_size, default=parse_size("512M"), help="size of the big file")
    parser.add_argument("--small", type=int, default=40, help="number of small files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--server", choices=["juicefs", "moto"], default="juicefs")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    hub, url = start_hub(args.large, args.small, args.work / "hub")
    bin_dir = Path(sys.executable).parent
    tools = {
        "ours": lambda bucket, s3, scratch: [
            str(bin_dir / "artifact-import"),
            "-q",
            "import",
            f"hf://{REPO}",
            "--to",
            f"s3://{bucket}/models",
        ],
        "snapshot_download+fput_object": lambda bucket, s3, scratch: [
            sys.executable,
            "-c",
            TWO_STEP,
            REPO,
            bucket,
            s3.endpoint.url.removeprefix("http://"),
            scratch,
        ],
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in tools}
    try:
        for round_ in range(args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                scratch = tempfile.mkdtemp(prefix="scratch-", dir=args.work)
                s3 = (
                    S3Server.start_moto(Path(scratch))
                    if args.server == "moto"
                    else S3Server.start_juicefs(Path(scratch))
                )
                try:
                    bucket = s3.make_bucket("bench")
                    env = {
                        **os.environ,
                        **s3.env(),
                        "HF_ENDPOINT": url,
                        "HF_HUB_DISABLE_TELEMETRY": "1",
                        "HF_HOME": str(Path(scratch) / "hf-home"),
                    }
                    seconds, rss = measure(tools[name](bucket, s3, scratch), env)
                    objects = list(s3.endpoint.client(max_connections=1).list_objects(bucket, recursive=True))
                    assert len([o for o in objects if ".artifact-import" not in str(o.object_name)]) == args.small + 1
                finally:
                    s3.kill()
                    shutil.rmtree(scratch, ignore_errors=True)
                results[name].append((seconds, rss))
                print(f"round {round_ + 1} {name}: {seconds:.2f}s, peak RSS {rss:.0f} MiB", file=sys.stderr)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    total = args.large + sum(len(data) for data in small_files(args.small).values() if isinstance(data, bytes))
    print(f"\n{args.large / 2**20:.0f} MiB + {args.small} small files into {args.server}, ", end="")
    print(f"{args.rounds} round(s), median:\n")
    print("| route | seconds | MiB/s | peak RSS of the tool (MiB) |")
    print("|---|---:|---:|---:|")
    medians = {}
    for name, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        medians[name] = seconds
        print(f"| {name} | {seconds:.2f} | {total / seconds / 2**20:.0f} | {max(r[1] for r in runs):.0f} |")
    print(f"\nspeed ratio ours / two-step: {medians['snapshot_download+fput_object'] / medians['ours']:.2f}x")


if __name__ == "__main__":
    main()
