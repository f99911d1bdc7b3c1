"""Debian's nginx as the CDN the test hub redirects LFS files to.

The hub (``tests/hub.py``) answers ``/resolve/`` of an LFS file with a
redirect to ``{cdn_url}/lfs/{sha256}?...``; this nginx serves those URLs
straight from the hub's blob folder, with its own configuration in a folder
of its own, as one process (no master, no ``user`` switch: it reads what
the test's user wrote). ``rate`` caps each response (``limit_rate``), as
CDNs cap each connection; the socket's send buffer is then kept at 64 KiB,
else the kernel takes the first megabytes of each response at once (on
loopback it grows to several) and a range of a few MiB is never paced.

Every request is logged with when it began and ended, so a test can count
the connections the server really saw at once (:meth:`peak_concurrency`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from .ports import free_port

#: ``start end connection status range``: start and end in seconds since the epoch, with milliseconds.
_LOG_FORMAT = "$msec $request_time $connection $status $http_range"


def nginx_binary() -> str | None:
    """The nginx executable, or None where Debian's ``nginx-light`` is not installed."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)


class NginxCDN:
    def __init__(self, process: subprocess.Popen[bytes], url: str, work_dir: Path) -> None:
        self.process = process
        self.url = url
        self.work_dir = work_dir

    @classmethod
    def start(
        cls, work_dir: Path, blobs: Path, *, rate: int = 0, host: str = "127.0.0.2", workers: int = 1
    ) -> NginxCDN:
        """nginx serving ``blobs/SHA256`` as ``/lfs/SHA256`` on ``host``, each response capped at ``rate``
        bytes/s (0: no cap)."""
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is missing: apt-get install nginx-light (scripts/test.sh does)")
        work_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("tmp", "logs"):
            (work_dir / sub).mkdir(exist_ok=True)
        port = free_port(host)
        temp = work_dir / "tmp"
        config = work_dir / "nginx.conf"
        config.write_text(
            f"""
daemon off;
master_process {"on" if workers > 1 else "off"};
worker_processes {workers};
pid {work_dir / "nginx.pid"};
error_log {work_dir / "logs" / "error.log"} warn;
events {{ worker_connections 1024; }}
http {{
    log_format timing '{_LOG_FORMAT}';
    access_log {work_dir / "logs" / "access.log"} timing;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    keepalive_timeout 60s;
    types {{ }}
    default_type application/octet-stream;
    server {{
        listen {host}:{port}{" sndbuf=64k" if rate else ""};
        location /lfs/ {{
            alias {Path(blobs).resolve()}/;
            limit_rate {rate};
        }}
    }}
}}
"""
        )
        log = open(work_dir / "logs" / "stderr.log", "wb")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [binary, "-p", str(work_dir), "-c", str(config), "-e", str(work_dir / "logs" / "error.log")],
            stdout=log,
            stderr=log,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((host, port), timeout=1):
                    break
            except OSError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                errors = (work_dir / "logs" / "error.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not start: {errors}")
            time.sleep(0.02)
        return cls(process, f"http://{host}:{port}", work_dir)

    def requests(self) -> list[tuple[float, float, int, int, str]]:
        """(start, end, connection, status, Range) of every request answered so far."""
        rows: list[tuple[float, float, int, int, str]] = []
        log = self.work_dir / "logs" / "access.log"
        if not log.exists():
            return rows
        for line in log.read_text().splitlines():
            end, took, connection, status, wanted = [*line.split(" ", 4), ""][:5]
            rows.append((float(end) - float(took), float(end), int(connection), int(status), wanted))
        return rows

    def peak_concurrency(self) -> int:
        """The most requests the server was answering at once."""
        events = sorted(
            [(start, 1) for start, *_ in self.requests()] + [(end, -1) for _, end, *_ in self.requests()],
            key=lambda e: (e[0], e[1]),
        )
        live = peak = 0
        for _, change in events:
            live += change
            peak = max(peak, live)
        return peak

    def clear_log(self) -> None:
        log = self.work_dir / "logs" / "access.log"
        if log.exists():
            log.write_text("")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
