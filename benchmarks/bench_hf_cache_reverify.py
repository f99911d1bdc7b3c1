"""Importing into a Hugging Face cache huggingface_hub already filled: what verifying it in place costs.

Per round, ``snapshot_download(cache_dir=...)`` fills a fresh cache from the local hub (timed: the download
ours avoids), then ``artifact-import import --to hf-cache:CACHE`` imports into it: every blob is read and
verified where it is, nothing is fetched (timed), then the same import again (everything skipped: timed).

    .venv/bin/python -m benchmarks.bench_hf_cache_reverify --large 1G --rounds 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

from tests.hub import parse_size

from .bench_hf_import import REPO, ROOT, SNAPSHOT_CACHE, measure, start_hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=parse_size, default=parse_size("1G"), help="size of the big file")
    parser.add_argument("--small", type=int, default=40, help="number of small files")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="reverify-", dir=args.work))
    hub, url = start_hub(args.large, args.small, work / "hub")
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(work / "home")}
    env.pop("HF_TOKEN", None)
    ours = [str(Path(sys.executable).parent / "artifact-import"), "-q", "import", f"hf://{REPO}", "--to"]
    print(
        "| round | snapshot_download fills (s) | ours verifies it in place (s) | ours again, all skipped (s) "
        "| ours peak RSS (MiB) |"
    )
    print("|---:|---:|---:|---:|---:|")
    try:
        for round_ in range(args.rounds):
            cache = work / f"cache-{round_}"
            filled, _ = measure([sys.executable, "-c", SNAPSHOT_CACHE, REPO, str(cache)], env)
            verified, rss = measure([*ours, f"hf-cache:{cache}"], env)
            again, _ = measure([*ours, f"hf-cache:{cache}"], env)
            print(f"| {round_ + 1} | {filled:.2f} | {verified:.2f} | {again:.2f} | {rss:.0f} |")
            shutil.rmtree(cache)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
