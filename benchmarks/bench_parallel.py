"""Large files from a real web server as the CDN: artifact-import versus aria2c, curl and snapshot_download.

The local hub (its own process) lists the repository and answers each LFS
file's ``resolve`` URL with a redirect, as the Hub does; the redirect points
at Debian's nginx (``tests/nginx.py``, its own configuration in the work
folder), which serves the same blob files with ``sendfile`` and, for the
capped scenarios, ``limit_rate`` per connection as CDNs cap each connection.
Every tool downloads the same repository in the same run, each in a fresh
child process, in alternating order; for each the wall time, the time until
its files are on disk (its time plus a ``sync`` of what it wrote, timed
right after it), the peak RSS and the CPU seconds (user + system, from
``wait4``: the client's processes, not the servers') are recorded.

    .venv/bin/python -m benchmarks.bench_parallel --scenario one      # 1 GiB, 50 MiB/s per connection
    .venv/bin/python -m benchmarks.bench_parallel --scenario shards   # 8 x 256 MiB, 50 MiB/s per connection
    .venv/bin/python -m benchmarks.bench_parallel --scenario lan      # 1 GiB, no cap

Tools: ours (sha256 of every file, the model checks, fsync before each
rename); ``aria2c -x16 -s16 -j5 -k1M`` (as ``hfd.sh`` runs it); the same
with ``checksum=sha-256`` per file (aria2c then hashes each file once it is
complete); ``curl`` (one process, the files one after the other);
``snapshot_download``. Floors, measured in the same run: the CPU a client
cannot avoid (curl's, plus hashlib's sha256 of the same bytes) and the
disk's durable rate (``dd bs=1M conv=fsync`` of as many bytes).

The disk is synced, untimed, before each tool, so that no tool pays for the
writeback another left.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from benchmarks.bench_hf_import import REPO, ROOT, SNAPSHOT, Usage, run_child, start_hub
from tests.hub import parse_size
from tests.nginx import NginxCDN

MiB = 1 << 20
GiB = 1 << 30
SCENARIOS: dict[str, tuple[dict[str, int], int]] = {
    "one": ({"model.safetensors": 1 << 30}, 50 * MiB),
    "shards": ({f"model-{i:05d}-of-00008.safetensors": 256 * MiB for i in range(1, 9)}, 50 * MiB),
    "lan": ({"model.safetensors": 1 << 30}, 0),
}
TOOLS = ("ours", "aria2c", "aria2c-sha256", "curl", "snapshot_download")


def sha256_cpu_per_gib() -> float:
    """CPU seconds hashlib's sha256 takes for a GiB (of 1 MiB chunks, as the imports hash them)."""
    block = os.urandom(MiB)
    h = hashlib.sha256()
    started = time.process_time()
    for _ in range(1024):
        h.update(block)
    return time.process_time() - started


def listed_sha256(url: str) -> dict[str, str]:
    with urllib.request.urlopen(f"{url}/api/models/{REPO}/tree/main?recursive=true") as resp:
        return {e["path"]: e["lfs"]["oid"] for e in json.load(resp) if e.get("lfs")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="one")
    parser.add_argument("--rate", type=parse_size, default=None, help="override the per-connection cap, e.g. 50M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--only", action="append", choices=TOOLS)
    parser.add_argument("--connections", type=int, default=None, help="ours: --connections")
    parser.add_argument(
        "--cdn",
        choices=["nginx", "hub"],
        default="nginx",
        help="who serves the LFS files: nginx (default) or the Python hub itself (the older harness)",
    )
    parser.add_argument("--work", type=Path, default=ROOT / "benchmarks" / "work")
    args = parser.parse_args()

    files, rate = SCENARIOS[args.scenario]
    rate = args.rate if args.rate is not None else rate
    args.work.mkdir(parents=True, exist_ok=True)
    cdn: NginxCDN | None = None
    if args.cdn == "nginx":
        cdn = NginxCDN.start(args.work / "nginx", args.work / "hub" / "blobs", rate=rate)
    hub, url = start_hub(
        0, 0, args.work / "hub", files=files, rate=0 if cdn else rate, cdn_url=cdn.url if cdn else ""
    )
    total = sum(files.values())
    resolve = f"{url}/{REPO}/resolve/main"
    env = {**os.environ, "HF_ENDPOINT": url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_TOKEN", None)
    bin_dir = Path(sys.executable).parent
    extra = ["--connections", str(args.connections)] if args.connections else []
    digests = listed_sha256(url)

    def aria2c(checksum: bool) -> Callable[[str], list[str]]:
        def command(dest: str) -> list[str]:
            Path(dest).mkdir(parents=True)
            listing = Path(dest).parent / "aria2-input"
            listing.write_text(
                "".join(
                    f"{resolve}/{path}\n  out={path}\n" + (f"  checksum=sha-256={digests[path]}\n" if checksum else "")
                    for path in files
                )
            )
            return [
                "aria2c", "--console-log-level=error", "--file-allocation=none", "--summary-interval=0",
                "-x16", "-s16", "-j5", "-k1M", "-d", dest, "-i", str(listing),
            ]  # fmt: skip

        return command

    def curl(dest: str) -> list[str]:
        # One process, the files one after the other (each -o pairs with the URL after it).
        return ["curl", "-sSfL", "--create-dirs"] + [
            arg for path in files for arg in ("-o", f"{dest}/{path}", f"{resolve}/{path}")
        ]

    tools: dict[str, Callable[[str], list[str]]] = {
        "ours": lambda dest: [str(bin_dir / "artifact-import"), "-q", "import", f"hf://{REPO}", "--to", dest, *extra],
        "aria2c": aria2c(False),
        "aria2c-sha256": aria2c(True),
        "curl": curl,
        "snapshot_download": lambda dest: [sys.executable, "-c", SNAPSHOT, REPO, dest],
    }
    if args.only:
        tools = {name: tools[name] for name in args.only}
    results: dict[str, list[tuple[Usage, float]]] = {name: [] for name in tools}
    disk: list[float] = []
    hashing = [sha256_cpu_per_gib()]
    load_before = os.getloadavg()
    try:
        for round_ in range(-args.warmup, args.rounds):
            order = list(tools) if round_ % 2 == 0 else list(reversed(tools))
            for name in order:
                where = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=args.work))
                run_env = {**env, "HF_HOME": str(where / "hf-home")}
                # Untimed: what the previous tool left for the disk to write is written now, not during the
                # next tool's run (the tools that do not fsync would otherwise bill the next one).
                os.sync()
                usage = run_child(tools[name](str(where / "model")), run_env)
                written = [str(p) for p in (where / "model").rglob("*") if p.is_file()]
                durable = usage.seconds + run_child(["sync", *written], run_env).seconds
                if round_ >= 0:
                    results[name].append((usage, durable))
                print(
                    f"{'round' if round_ >= 0 else 'warm-up'} {round_ + 1} {name}: "
                    f"{usage.seconds:.2f}s ({durable:.2f}s to disk), {total / usage.seconds / MiB:.0f} MiB/s, "
                    f"CPU {usage.user:.2f}+{usage.system:.2f}s, peak RSS {usage.rss:.0f} MiB",
                    file=sys.stderr,
                )
                shutil.rmtree(where)
            if round_ >= 0:
                os.sync()
                target = args.work / "dd.bin"
                dd_command = ["dd", "if=/dev/zero", f"of={target}", "bs=1M", f"count={total // MiB}", "conv=fsync"]
                dd = run_child(dd_command, env)
                target.unlink()
                disk.append(dd.seconds)
                hashing.append(sha256_cpu_per_gib())
    finally:
        hub.terminate()
        hub.wait()
        if cdn is not None:
            cdn.stop()
        shutil.rmtree(args.work / "hub", ignore_errors=True)
    load_after = os.getloadavg()

    gib = total / GiB
    cap = f"{rate / MiB:.0f} MiB/s per connection" if rate else "no cap"
    served = "nginx" if cdn else "the Python hub"
    print(f"\n{len(files)} file(s), {total / MiB:.0f} MiB from {served}, {cap}, {args.rounds} round(s), median:\n")
    print("| tool | seconds | seconds to disk | MiB/s | CPU s/GiB (user+sys) | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|---:|")
    wall = {n: statistics.median(u.seconds for u, _ in r) for n, r in results.items()}
    durable = {n: statistics.median(d for _, d in r) for n, r in results.items()}
    cpu = {n: statistics.median(u.cpu for u, _ in r) / gib for n, r in results.items()}
    for name, runs in results.items():
        user = statistics.median(u.user for u, _ in runs) / gib
        system = statistics.median(u.system for u, _ in runs) / gib
        print(
            f"| {name} | {wall[name]:.2f} | {durable[name]:.2f} | {total / wall[name] / MiB:.0f} | "
            f"{cpu[name]:.2f} ({user:.2f}+{system:.2f}) | {max(u.rss for u, _ in runs):.0f} |"
        )
    sha = statistics.median(hashing)
    print(f"\nfloors: sha256 {sha:.2f} CPU s/GiB; disk durable (dd conv=fsync) {statistics.median(disk):.2f} s")
    if "ours" not in results:
        return

    def paired(peer: str, peer_time: Callable[[Usage, float], float]) -> str:
        """Median over rounds of peer/ours in that round, and its range."""
        ratios = [peer_time(*p) / o.seconds for p, (o, _) in zip(results[peer], results["ours"], strict=True)]
        return f"{statistics.median(ratios):.2f}x (rounds {min(ratios):.2f}-{max(ratios):.2f})"

    print("\nours is (peer's time / ours, per round; ours is durable when it exits):")
    for name in results:
        if name == "ours":
            continue
        exits, on_disk = paired(name, lambda u, d: u.seconds), paired(name, lambda u, d: d)
        print(f"- vs {name}: {exits}; vs its time to disk {on_disk}")
    # The VM's disk changes speed from minute to minute (dd took 0.5 s and 3.3 s twenty minutes apart): each
    # round's dd, run right after the tools, against ours in that round.
    to_dd = [d / o.seconds for d, (o, _) in zip(disk, results["ours"], strict=True)]
    print(
        f"- vs dd conv=fsync (the disk's durable time): {statistics.median(to_dd):.2f}x "
        f"(rounds {min(to_dd):.2f}-{max(to_dd):.2f})"
    )
    if "curl" in cpu:
        floor = cpu["curl"] + sha
        print(f"- CPU: ours {cpu['ours']:.2f} s/GiB, floor (curl + sha256) {floor:.2f}: {cpu['ours'] / floor:.2f}x")
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2 cores; other work shares them)"
    )


if __name__ == "__main__":
    main()
