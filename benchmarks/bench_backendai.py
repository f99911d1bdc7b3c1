"""Inside the Backend.AI storage proxy (26.9.6): its own Hugging Face import pipeline versus ours, same route.

The proxy's Hugging Face route (its real handler, service and storage-mapping resolver; stand-ins for the
Valkey tracker, the event producer and the background-task starter, as in tests/backendai) imports the same
generated repository from the same local hub (its own process) into a vfolder of the same ``BaseVolume``,
driven with the manager's exact body (every step mapped to the vfolder, ``storage_prefix`` "/").
``theirs`` runs the route as shipped; ``ours`` the same route with its pipeline factory replaced by
``artifact_import.backendai.create_huggingface_import_pipeline`` (the one-line change). Each run is a fresh
child process: wall time and peak RSS from ``wait4``, and the import's own time (POST to the end of the
background task), which leaves out the ~1 s both spend importing the proxy's package. Rounds alternate.

Runs in .venv-backendai (Python 3.13; ``scripts/setup-backendai.sh`` makes it)::

    .venv-backendai/bin/python -m benchmarks.bench_backendai                  # 1 GiB + 40 small files, 3 rounds
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, start_hub
from tests.hub import parse_size, small_files


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float, dict[str, object]]:
    """Wall seconds, peak RSS in MiB and the JSON the child printed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[4]} failed ({proc.returncode}): {err.read().decode()[-3000:]}")
        return elapsed, usage.ru_maxrss / 1024, json.loads(out.read().decode().strip().splitlines()[-1])


def run_child(kind: str, mount: Path, hub_url: str) -> None:
    """One import through their route into a fresh vfolder; prints {"seconds", "bytes", "files"} as JSON."""
    from ai.backend.storage.api.v1.registries import huggingface as their_route
    from ai.backend.storage.context_types import ArtifactVerifierContext
    from aiohttp.test_utils import TestClient, TestServer

    import artifact_import.backendai
    from tests.backendai.theirs import Proxy, base_volume, manager_body, new_vfolder

    if kind == "ours":
        their_route.create_huggingface_import_pipeline = (  # type: ignore[attr-defined]
            artifact_import.backendai.create_huggingface_import_pipeline
        )

    async def main() -> dict[str, object]:
        volume = await base_volume(mount)
        vfid = await new_vfolder(volume)
        proxy = Proxy(volume, hub_url, ArtifactVerifierContext())
        async with TestClient(TestServer(proxy.app())) as client:
            started = time.monotonic()
            answer = await client.post("/v1/registries/huggingface/import", json=manager_body(REPO, vfid, prefix="/"))
            assert answer.status == 202, await answer.text()
            outcome = await proxy.tasks.result(uuid.UUID((await answer.json())["task_id"]), within=3600)
            seconds = time.monotonic() - started
        (done,) = [e for e in proxy.events.anycast if type(e).__name__ == "ModelImportDoneEvent"][-1:]
        files = [p for p in volume.mangle_vfpath(vfid).rglob("*") if p.is_file() and ".artifact-import" not in p.parts]
        if not done.success:
            raise SystemExit(f"{kind}: the import failed: {outcome}")
        return {"seconds": seconds, "bytes": sum(p.stat().st_size for p in files), "files": len(files)}

    print(json.dumps(asyncio.run(main())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--large", type=parse_size, default=parse_size("1G"), help="size of the big file")
    parser.add_argument("--small", type=int, default=40, help="number of small files")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["ours", "theirs"], default=None)
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    parser.add_argument("--child", choices=["ours", "theirs"], help=argparse.SUPPRESS)
    parser.add_argument("--mount", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--hub", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.mount, args.hub)
        return
    if sys.version_info[:2] != (3, 13):
        raise SystemExit("run it with .venv-backendai/bin/python (the storage proxy needs Python 3.13)")

    args.work.mkdir(parents=True, exist_ok=True)
    hub, url = start_hub(args.large, args.small, args.work / "hub")
    total = args.large + sum(len(data) for data in small_files(args.small).values() if isinstance(data, bytes))
    kinds = [args.only] if args.only else ["theirs", "ours"]
    results: dict[str, list[tuple[float, float, float]]] = {kind: [] for kind in kinds}
    try:
        for round_ in range(args.rounds):
            for kind in kinds if round_ % 2 == 0 else list(reversed(kinds)):
                mount = Path(tempfile.mkdtemp(prefix=f"bai-{kind}-", dir=args.work))
                home = mount.parent / f"hf-home-{kind}-{round_}"
                # Their client lists files through huggingface_hub's default endpoint: the same hub here.
                env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(home)}
                env.pop("HF_TOKEN", None)
                cmd = [sys.executable, "-m", "benchmarks.bench_backendai", "--child", kind]
                wall, rss, child = measure([*cmd, "--mount", str(mount / "vfroot"), "--hub", url], env)
                if child["bytes"] != total or child["files"] != args.small + 1:
                    raise SystemExit(f"{kind}: imported {child}, expected {args.small + 1} files, {total} bytes")
                seconds = float(str(child["seconds"]))
                results[kind].append((seconds, wall, rss))
                print(
                    f"round {round_ + 1} {kind}: import {seconds:.2f}s ({total / seconds / 2**20:.0f} MiB/s), "
                    f"process {wall:.2f}s, peak RSS {rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(mount, ignore_errors=True)
                shutil.rmtree(home, ignore_errors=True)
    finally:
        hub.terminate()
        hub.wait()
        shutil.rmtree(args.work / "hub", ignore_errors=True)

    print(f"\n{args.large / 2**30:.2f} GiB file + {args.small} small files, {args.rounds} round(s), median:\n")
    print("| pipeline | import seconds | MiB/s | process seconds | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    medians = {}
    for kind, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        medians[kind] = seconds
        wall = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs)
        print(f"| {kind} | {seconds:.2f} | {total / seconds / 2**20:.0f} | {wall:.2f} | {rss:.0f} |")
    if len(medians) == 2:
        print(f"\nspeed ratio ours / theirs: {medians['theirs'] / medians['ours']:.2f}x")


if __name__ == "__main__":
    main()
