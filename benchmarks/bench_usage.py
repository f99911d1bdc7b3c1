"""How long a quota scope's usage takes with many objects: the usage record versus a full listing.

A quota scope on an object volume holding ``--objects`` small objects (on
moto's standalone server by default, or on the S3 server of
``ARTIFACT_IMPORT_TEST_S3_*``). Timed in the same run:

- **record**: ``get_quota`` of a fresh ``ObjectVolume`` (a new process would
  do this): one GET of the scope's usage record.
- **listing**: ``reconcile_usage``: every object listed, 1,000 per request,
  sizes summed page by page.
- **VFS tree**: the same number of files in a ``VFSVolume`` scope, measured
  by walking the tree (what a VFS volume does for every import that starts).

    .venv/bin/python -m benchmarks.bench_usage --objects 10000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from artifact_import import ObjectVolume, VFolderID, VFSVolume
from benchmarks.bench_hf_import import ROOT
from tests.s3server import S3Server

SCOPE = "user-1"


def populate_bucket(s3: S3Server, bucket: str, count: int) -> int:
    client = s3.endpoint.client(max_connections=16)
    folders = [uuid.uuid4().hex for _ in range(10)]

    def put(n: int) -> int:
        size = 100 + n % 900
        client.put_object(bucket, f"vfroot/{SCOPE}/{folders[n % 10]}/f/{n:06d}.json", io.BytesIO(b"x" * size), size)
        return size

    with ThreadPoolExecutor(16) as pool:
        return sum(pool.map(put, range(count)))


def populate_tree(volume: VFSVolume, count: int) -> int:
    total = 0
    vfids = [VFolderID(SCOPE, uuid.uuid4()) for _ in range(10)]
    for n in range(count):
        folder = volume.vfolder_path(vfids[n % 10]) / "f"
        folder.mkdir(parents=True, exist_ok=True)
        size = 100 + n % 900
        (folder / f"{n:06d}.json").write_bytes(b"x" * size)
        total += size
    return total


async def timed(fn: Callable[[], Awaitable[int]]) -> tuple[float, int]:
    started = time.perf_counter()
    used = await fn()
    return time.perf_counter() - started, used


async def run(s3: S3Server, count: int, rounds: int, work: Path) -> None:
    bucket = s3.make_bucket("usage")
    print(f"putting {count} objects ...", flush=True)
    expected = populate_bucket(s3, bucket, count)
    setup = ObjectVolume("bench", s3.endpoint, bucket, "vfroot")
    await setup.reconcile_usage(SCOPE)  # writes the record
    await setup.aclose()

    async def record() -> int:
        volume = ObjectVolume("bench", s3.endpoint, bucket, "vfroot")
        try:
            return (await volume.get_quota(SCOPE)).used
        finally:
            await volume.aclose()

    async def listing() -> int:
        volume = ObjectVolume("bench", s3.endpoint, bucket, "vfroot")
        try:
            return (await volume.reconcile_usage(SCOPE)).used
        finally:
            await volume.aclose()

    with tempfile.TemporaryDirectory(dir=work) as tmp:
        vfs = VFSVolume("bench", Path(tmp))
        tree_expected = populate_tree(vfs, count)

        async def tree() -> int:
            return await vfs.measure_usage(SCOPE)

        results: dict[str, list[float]] = {"record": [], "listing": [], "VFS tree": []}
        for _ in range(rounds):
            measures: list[tuple[str, Callable[[], Awaitable[int]], int]] = [
                ("record", record, expected),
                ("listing", listing, expected),
                ("VFS tree", tree, tree_expected),
            ]
            for name, fn, want in measures:
                seconds, used = await timed(fn)
                assert used == want, (name, used, want)
                results[name].append(seconds)
    print(f"\n{count} objects / files in one quota scope, median of {rounds}:\n")
    print("| usage by | seconds (median) | rounds |")
    print("|---|---:|---|")
    for name, times in results.items():
        print(f"| {name} | {statistics.median(times):.3f} | {', '.join(f'{t:.3f}' for t in times)} |")
    ratio = statistics.median(results["listing"]) / statistics.median(results["record"])
    print(f"\nlisting / record: {ratio:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    s3 = S3Server.from_env() or S3Server.start_moto(args.work)
    try:
        asyncio.run(run(s3, args.objects, args.rounds, args.work))
    finally:
        s3.stop()


if __name__ == "__main__":
    main()
