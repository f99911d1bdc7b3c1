"""A real clamd on loopback for the tests: generated config, a test signature database, stock limits.

No signature download is possible here, so the database holds one signature:
the EICAR test string (``Test.Eicar``). Every other setting is clamd's stock
default, notably StreamMaxLength and MaxFileSize of 100 MB.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .daemon import Daemon
from .ports import free_port

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
SIGNATURE = "Test.Eicar.UNOFFICIAL"


def clamd_binary() -> str | None:
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


class Clamd(Daemon):
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Clamd:
        binary = clamd_binary()
        if binary is None:
            raise RuntimeError("clamd is not installed: ./scripts/test.sh installs Debian's clamav-daemon")
        db = self.workdir / "db"
        db.mkdir(parents=True, exist_ok=True)
        (db / "test.ndb").write_text(f"Test.Eicar:0:*:{EICAR.hex()}\n")
        (self.workdir / "tmp").mkdir(exist_ok=True)
        conf = self.workdir / "clamd.conf"
        conf.write_text(
            "Foreground yes\n"
            f"TCPSocket {self.port}\n"
            "TCPAddr 127.0.0.1\n"
            f"DatabaseDirectory {db}\n"
            f"TemporaryDirectory {self.workdir / 'tmp'}\n"
            f"LogFile {self.workdir / 'clamd.log'}\n"
            f"PidFile {self.workdir / 'clamd.pid'}\n"
        )
        log = open(self.workdir / "clamd.out", "wb")  # noqa: SIM115 - lives as long as clamd
        self.process = subprocess.Popen([binary, f"--config-file={conf}"], stdout=log, stderr=log)
        deadline = time.monotonic() + 60
        while not self.ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"clamd did not start; see {self.workdir / 'clamd.out'}")
            time.sleep(0.1)
        return self

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"zPING\0")
                return s.recv(16).startswith(b"PONG")
        except OSError:
            return False
