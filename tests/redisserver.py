"""Debian's redis-server on a loopback port, for the fleet's task store."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .ports import free_port


class RedisServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, work_dir: Path) -> None:
        self.process = process
        self.port = port
        self.work_dir = work_dir

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def start(cls, work_dir: Path, port: int | None = None) -> RedisServer:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            raise RuntimeError("redis-server is missing: apt-get install redis-server (scripts/test.sh does)")
        port = port or free_port()
        work_dir.mkdir(parents=True, exist_ok=True)
        log = open(work_dir / "redis.log", "ab")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(work_dir), "--protected-mode", "yes"],
            stdout=log, stderr=log,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith(b"+PONG"):
                        return cls(process, port, work_dir)
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start: {(work_dir / 'redis.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def restart_empty(self) -> None:
        """kill -9 and start again on the same port: without persistence (as the tests run it), with no data."""
        self.process.kill()
        self.process.wait()
        again = RedisServer.start(self.work_dir, self.port)
        self.process = again.process

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
