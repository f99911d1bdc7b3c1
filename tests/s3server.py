"""A real S3-protocol server on loopback for the tests.

moto's standalone server (a subprocess, so a test can kill it), unless
``ARTIFACT_IMPORT_TEST_S3_ENDPOINT``, ``ARTIFACT_IMPORT_TEST_S3_ACCESS_KEY``
and ``ARTIFACT_IMPORT_TEST_S3_SECRET_KEY`` name a real one (e.g. MinIO).
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from artifact_import.s3 import S3Credentials, S3Endpoint

from .daemon import Daemon

MOTO_ACCESS_KEY = "AKIAARTIFACTIMPORTTEST"
MOTO_SECRET_KEY = "moto-secret-key-that-must-never-be-printed"
_buckets = itertools.count()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server(Daemon):
    def __init__(self, endpoint: S3Endpoint, process: subprocess.Popen[bytes] | None = None) -> None:
        self.endpoint = endpoint
        self.process = process

    @property
    def external(self) -> bool:
        return self.process is None

    @classmethod
    def from_env(cls) -> S3Server | None:
        url = os.environ.get("ARTIFACT_IMPORT_TEST_S3_ENDPOINT")
        if not url:
            return None
        creds = S3Credentials(
            os.environ["ARTIFACT_IMPORT_TEST_S3_ACCESS_KEY"], os.environ["ARTIFACT_IMPORT_TEST_S3_SECRET_KEY"]
        )
        return cls(S3Endpoint(url, creds, os.environ.get("ARTIFACT_IMPORT_TEST_S3_REGION", "us-east-1")))

    @classmethod
    def start_moto(cls, log_dir: Path, *, auth: bool = False) -> S3Server:
        """moto's standalone server; with ``auth``, it refuses keys it does not know (all of them)."""
        port = _free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        log = open(log_dir / f"moto-{port}.log", "wb")  # noqa: SIM115 - lives as long as the server
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None
        process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start; see {log.name}") from None
                time.sleep(0.1)
        return cls(S3Endpoint(url, S3Credentials(MOTO_ACCESS_KEY, MOTO_SECRET_KEY)), process)

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a CLI run at this server."""
        creds = self.endpoint.credentials
        assert creds is not None
        return {
            "AWS_ENDPOINT_URL": self.endpoint.url,
            "AWS_ACCESS_KEY_ID": creds.access_key,
            "AWS_SECRET_ACCESS_KEY": creds.secret_key,
            "AWS_DEFAULT_REGION": self.endpoint.region,
        }

    def make_bucket(self, prefix: str = "bucket") -> str:
        name = f"ai-test-{prefix}-{os.getpid()}-{next(_buckets)}"
        self.endpoint.client(max_connections=1).make_bucket(name)
        return name
