"""`artifact-import serve` as a real process: who may call it, and clients that would take its descriptors.

Issue 23: 1,010 idle event streams used up a 1,024-descriptor limit and both running imports failed "Too many
open files"; ``--host 0.0.0.0`` started without a word and without a password.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, files_under, repo_name
from .hub import LocalHub
from .ports import free_port

TOKEN = "serve-token-for-the-tests-0123456789"


class Serve:
    """One ``serve`` process; requests go from a loopback address of the test's choosing."""

    def __init__(self, tmp_path: Path, config: str, *, env: dict[str, str] | None = None, nofile: int = 0) -> None:
        self.config = tmp_path / "proxy.toml"
        self.config.write_text(config)
        self.port = free_port()
        self.log = tmp_path / "serve.log"

        def limit() -> None:
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artifact_import.cli", "--config", str(self.config), "serve", "--port",
             str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(self.log, "wb"),  # noqa: SIM115
            env={**{k: v for k, v in os.environ.items() if k != "HF_TOKEN"}, **(env or {})}, preexec_fn=limit,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                self.call("GET", "/import")
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "serve did not start"
                time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None, *, source: str = "127.0.0.9") -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30, source_address=(source, 0))
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, data, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


@pytest.fixture
def serves() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for serve in started:
        if serve.proc.poll() is None:
            serve.proc.kill()
            serve.proc.wait()


def _config(tmp_path: Path, extra: str = "") -> str:
    return (
        f'[server]\nauth-token = "{TOKEN}"\n{extra}\n'
        f'[storage.models]\nbackend = "vfs"\npath = "{tmp_path / "models"}"\nfsync = false\n'
    )


def test_serve_refuses_a_public_address_without_a_token_and_takes_one_from_a_file_or_the_environment(
    tmp_path: Path, serves: list[Serve]
) -> None:
    port = str(free_port())
    storage = f'[storage.models]\nbackend = "vfs"\npath = "{tmp_path / "models"}"\nfsync = false\n'
    (tmp_path / "open.toml").write_text(storage)
    base = [sys.executable, "-m", "artifact_import.cli", "--config", str(tmp_path / "open.toml"), "serve"]
    base += ["--host", "0.0.0.0", "--port", port]
    env = {k: v for k, v in os.environ.items() if k != "ARTIFACT_IMPORT_AUTH_TOKEN"}
    try:
        refused = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, env=env, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("serve listened on 0.0.0.0 without a token")
    assert refused.returncode == 2, refused.stderr
    assert "refusing to listen on 0.0.0.0 without authentication" in refused.stderr
    # The same secret from a file (relative to the config) and from the environment.
    (tmp_path / "token").write_text(TOKEN + "\n")
    serves.append(Serve(tmp_path, '[server]\nauth-token-file = "token"\n' + storage))
    (tmp_path / "env").mkdir()
    serves.append(Serve(tmp_path / "env", storage, env={"ARTIFACT_IMPORT_AUTH_TOKEN": TOKEN}))
    for serve in serves:
        assert serve.call("GET", "/import")[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", serve.port, timeout=10)
        conn.request("GET", "/import")
        assert conn.getresponse().status == 401, "without the token"
        conn.close()
    short = subprocess.run(base, capture_output=True, text=True, cwd=ROOT, timeout=20,
                           env={**env, "ARTIFACT_IMPORT_AUTH_TOKEN": "short"})  # fmt: skip
    assert short.returncode == 2 and "ARTIFACT_IMPORT_AUTH_TOKEN: the auth token must be at least 16" in short.stderr


def _idle(count: int, source: str, port: int) -> list[socket.socket]:
    """Connections that send nothing (a slow or hostile client), as many as the server lets in."""
    held = []
    deadline = time.monotonic() + 10  # a server that stopped accepting is not waited for 700 times
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        s = socket.socket()
        s.settimeout(1)
        s.bind((source, 0))
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            s.close()
            continue
        held.append(s)
    return held


def _streams(count: int, source: str, port: int, task_id: str) -> list[tuple[socket.socket, bytes]]:
    """Event streams opened and left open, each with the start of what the server answered (within 10 s)."""
    import selectors

    opened = []
    for s in _idle(count, source, port):
        request = f"GET /import/{task_id}/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        try:
            s.sendall(request.encode())
        except OSError:
            s.close()
            continue
        opened.append(s)
    heads = dict.fromkeys(opened, b"")
    with selectors.DefaultSelector() as selector:
        for s in opened:
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + 10
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                with contextlib.suppress(OSError):
                    heads[sock] = sock.recv(1024)
                selector.unregister(sock)
    return list(heads.items())


def test_a_flood_of_idle_connections_and_event_streams_never_takes_the_descriptors_an_import_needs(
    hub: LocalHub, tmp_path: Path, serves: list[Serve]
) -> None:
    """Under a 512-descriptor limit (as a service may be), 700 idle connections and 60 event streams from two
    clients while an import runs: the import succeeds; clients over their share are told 429, over the
    server's 503, with Retry-After; the server answers again once they leave."""
    repo = repo_name("flood")
    files: dict[str, bytes | int] = {f"shard-{i:02d}.bin": 256 * 1024 for i in range(24)}
    hub.create_repo(repo, files)
    hub.faults.slow_bps = 256 * 1024  # 1 s a file, 8 at a time: about 3 s, new files and connections all along
    limits = (
        "max-connections = 60\nmax-connections-per-client = 40\n"
        "max-event-streams = 20\nmax-event-streams-per-client = 12\n"
    )
    serve = Serve(tmp_path, _config(tmp_path, limits), nofile=512)
    serves.append(serve)
    status, accepted = serve.call("POST", "/import", {"models": [{"repo_id": repo}],
                                                      "storage_step_mappings": {"archive": "models"}})  # fmt: skip
    assert status == 202, accepted
    task_id = accepted["task_id"]
    flood: list[socket.socket] = []
    try:
        streams = _streams(30, "127.0.0.1", serve.port, task_id) + _streams(30, "127.0.0.2", serve.port, task_id)
        flood += [s for s, _ in streams]
        heads = [head.split(b"\r\n", 1)[0] for _, head in streams]
        assert heads.count(b"HTTP/1.1 200 OK") == 20, heads
        assert any(b" 429 " in h for h in heads) and any(b" 503 " in h for h in heads), heads
        refused = next(head for _, head in streams if b" 503 " in head)
        assert b"Retry-After: 5" in refused
        flood += _idle(350, "127.0.0.1", serve.port) + _idle(350, "127.0.0.2", serve.port)
        # A third client while the server is full: told to come back, not left hanging (once the refused flood
        # has been closed: beyond what is worth answering, connections are closed at once).
        time.sleep(2.5)
        status, body = serve.call("GET", f"/import/{task_id}", source="127.0.0.3")
        assert status == 503 and "too busy" in body["error"]["message"], (status, body)
        deadline = time.monotonic() + 60
        while hub.requests.count(("GET", "shard-23.bin", None)) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # the import goes on opening files and connections under the flood
    finally:
        for s in flood:
            s.close()
    deadline = time.monotonic() + 60
    while True:
        try:
            status, task = serve.call("GET", f"/import/{task_id}")
        except OSError:
            status, task = 0, None
        if status == 200 and task["state"] in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, (status, task)
        time.sleep(0.2)
    assert task["state"] == "succeeded", task["error"]
    assert len(files_under(tmp_path / "models")) == 24 + 1  # and the manifest
    assert "Too many open files" not in serve.log.read_text()


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ('auth-token = "short-secret"', "server.auth-token: must be at least 16 characters long"),
        ('auth-token = "a secret with spaces in it"', "server.auth-token: must be printable ASCII without spaces"),
        ('auth-token-file = "missing-token"', "server.auth-token-file: cannot read"),
        ('auth-token = "0123456789abcdefXYZ"\nauth-token-file = "t"', "give auth-token or auth-token-file, not both"),
        ("max-connections = 0", "server.max-connections: must be a whole number from 1 to 1000000"),
        ('max-queued-imports = "many"', "server.max-queued-imports: must be a whole number"),
    ],
)
def test_bad_security_settings_are_refused_naming_the_line_never_the_secret(
    tmp_path: Path, lines: str, message: str
) -> None:
    from artifact_import.config import load_config
    from artifact_import.errors import ConfigError

    config = tmp_path / "proxy.toml"
    config.write_text(f"[server]\n{lines}\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(str(config))
    assert f"{config}:2:" in str(raised.value) or f"{config}:3:" in str(raised.value)
    for secret in ("short-secret", "a secret with spaces", "0123456789abcdefXYZ"):
        assert secret not in str(raised.value)
