"""An import on uvloop, the event loop Backend.AI's storage proxy runs with ``event-loop = "uvloop"``.

uvloop's transports are its own classes, not ``asyncio.Transport``'s subclasses; its thread-safe callbacks,
executors and sockets are libuv's. The import here goes through all of them: ranges over many connections
(the wire client's protocol), a dropped connection resumed, the digests hashed in their thread, the writes in
the executor, the commit; and clamd's verdict over a socket of uvloop's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import uvloop

from artifact_import import (
    HuggingFaceRegistry,
    ParallelPolicy,
    RetryPolicy,
    VerificationError,
    VFSStorage,
    import_artifact,
)
from artifact_import.registries.http import HttpTimeouts
from artifact_import.registries.wire import WireClient
from artifact_import.verifiers.clamav import ClamAVVerifier

from .clamd import EICAR, SIGNATURE, Clamd
from .conftest import fast_registry, files_under, repo_name
from .hub import LocalHub

MiB = 1 << 20
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_an_import_runs_the_same_on_either_event_loop(hub: LocalHub, tmp_path: Path, loop: str) -> None:
    repo = repo_name("loop")
    commit = hub.create_repo(repo, {"model.safetensors": 3 * MiB + 777, "config.json": b'{"hidden_size": 8}'})
    hub.faults.drop_after["model.safetensors"] = [100_000]
    registry = HuggingFaceRegistry(
        retry=RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_max=0.05),
        timeouts=HttpTimeouts(read=5.0),
        parallel=ParallelPolicy(connections=4, range_size=256 * 1024, min_size=MiB),
    )

    async def run() -> None:
        try:
            await import_artifact(f"hf://{repo}", VFSStorage("d", tmp_path / "m"), registry=registry)
        finally:
            await registry.aclose()

    with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(run())
    stored = hub.repos[repo].commits[commit]
    on_disk = files_under(tmp_path / "m")
    assert {p: hashlib.sha256(on_disk[p]).hexdigest() for p in stored} == {p: f.sha256 for p, f in stored.items()}
    ranges = [r for m, p, r in hub.requests if m == "GET" and p == "model.safetensors"]
    assert len(ranges) == 13 + 1, "13 ranges of 256 KiB, and the dropped one resumed"


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_clamd_finds_the_virus_on_either_event_loop(hub: LocalHub, clamd: Clamd, tmp_path: Path, loop: str) -> None:
    repo = repo_name("loop")
    hub.create_repo(repo, {"config.json": b"{}", "scripts/run.sh": b"#!/bin/sh\n" + EICAR + b"\n"})

    async def run() -> None:
        await import_artifact(
            f"hf://{repo}", tmp_path / "m", registry=fast_registry(), verifiers=[ClamAVVerifier(clamd.address)]
        )

    with pytest.raises(VerificationError) as info, asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
        runner.run(run())
    assert info.value.path == "scripts/run.sh" and f"infected: {SIGNATURE}" in str(info.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_client_closed_after_its_loop_is_gone_still_ends_its_connections(loop: str) -> None:
    """A registry used under one ``asyncio.run`` and closed under another (a script importing twice): on
    asyncio's loop the kept-alive connection's transport outlives its loop and can schedule nothing, so the
    socket is shut down directly (uvloop closes its transports with the loop); either way the server is
    told, and the close does not fail."""
    eof = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")  # kept alive: no Connection: close
            conn.settimeout(10)
            with contextlib.suppress(OSError):
                while conn.recv(65536):
                    pass
                eof.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    client = WireClient(chunk_size=65536, connect_timeout=5.0, read_timeout=5.0)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/x"

    async def get() -> bytes:
        async with client.request("GET", url, {}) as resp:
            return b"".join([chunk async for chunk in resp.iter_chunks()])

    try:
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            assert runner.run(get()) == b"ok"
        with asyncio.Runner(loop_factory=LOOPS[loop]) as runner:
            runner.run(client.close())
        assert eof.wait(5), "the server was told the connection is over"
    finally:
        listener.close()
        server.join(5)
