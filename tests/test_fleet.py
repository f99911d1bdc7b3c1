"""A fleet of `artifact-import serve` proxies sharing a real Redis: tasks seen, claimed, taken over, cancelled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, files_under, repo_name
from .hub import LocalHub
from .ports import free_port
from .redisserver import RedisServer

FILES: dict[str, bytes | int] = {"config.json": b'{"a": 1}', "model.safetensors": 3 * 1024 * 1024}
LEASE = 2


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    import redis

    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()  # each test starts with an empty task store
    client.close()
    return redis_server.url


class Proxy:
    """One `artifact-import serve` process of the fleet."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.port, self.log = config, free_port(), log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "artifact_import.cli", "--config", str(config), "serve", "--port", str(self.port)],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "ab"),  # noqa: SIM115
            env={k: v for k, v in os.environ.items() if k != "HF_TOKEN"},
        )  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{self.base}/import", timeout=1).close()
                return
            except OSError:
                assert self.proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, "the proxy did not start"
                time.sleep(0.1)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.base}{path}", data, {"Content-Type": "application/json"}, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=150) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def start(self, repo: str, archive: str = "models") -> str:
        status, body = self.call(
            "POST", "/import", {"models": [{"repo_id": repo}], "storage_step_mappings": {"archive": archive}}
        )
        assert status == 202, body
        return str(body["task_id"])

    def task(self, task_id: str) -> dict[str, Any]:
        status, body = self.call("GET", f"/import/{task_id}")
        assert status == 200, body
        return dict(body)

    def events(self, task_id: str) -> list[tuple[str, dict[str, Any]]]:
        found: list[tuple[str, dict[str, Any]]] = []
        with urllib.request.urlopen(f"{self.base}/import/{task_id}/events", timeout=120) as resp:
            kind = ""
            for raw in resp:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    found.append((kind, json.loads(line[6:])))
        return found

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def _config(tmp_path: Path, url: str, name: str, *, storage: str = "models", server: str = "") -> Path:
    config = tmp_path / f"{name}.toml"
    config.write_text(
        f'[server]\ntask-store = "{url}"\nlease = {LEASE}\n{server}\n'
        f'[storage.{storage}]\nbackend = "vfs"\npath = "{tmp_path / storage}"\nfsync = false\n'
    )
    return config


@pytest.fixture
def fleet(tmp_path: Path, redis_url: str) -> Iterator[list[Proxy]]:
    proxies = [Proxy(_config(tmp_path, redis_url, n), tmp_path / f"{n}.log") for n in ("a", "b")]
    yield proxies
    for proxy in proxies:
        if proxy.proc.poll() is None:
            proxy.proc.kill()
            proxy.proc.wait()


def _until(what: str, check: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _owner(task: dict[str, Any], proxies: list[Proxy]) -> Proxy:
    pid = int(str(task["owner"]).split(":")[1])
    return next(p for p in proxies if p.proc.pid == pid)


def _received(task: dict[str, Any], path: str) -> int:
    files = {f["path"]: f for f in task["models"][0]["files"]}
    return int(files[path]["bytes_done"]) if path in files else 0


def _expected(hub: LocalHub, repo: str) -> dict[str, bytes]:
    r = hub.repos[repo]
    return {p: f.disk.read_bytes() for p, f in r.commits[r.refs["main"]].items()}


def test_a_task_started_on_one_proxy_is_seen_with_its_progress_from_another(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy]
) -> None:
    a, b = fleet
    repo = repo_name("fleet")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 2 * 1024 * 1024
    task_id = a.start(repo)
    running = _until("progress seen from B", lambda: (t := b.task(task_id))["state"] == "running"
                     and _received(t, "model.safetensors") > 0 and t)  # fmt: skip
    assert running["owner"] is not None and running["id"] == task_id
    events = b.events(task_id)  # from B, whoever runs it
    assert events[-1][0] == "state" and events[-1][1]["state"] == "succeeded"
    assert any(kind == "file" and data["path"] == "model.safetensors" for kind, data in events)
    assert a.task(task_id) == b.task(task_id)
    assert b.task(task_id)["models"][0]["result"]["file_count"] == 2
    assert files_under(tmp_path / "models")["model.safetensors"] == _expected(hub, repo)["model.safetensors"]
    status, listing = b.call("GET", "/import")
    assert status == 200 and [t["id"] for t in listing["tasks"]] == [task_id]


@pytest.mark.parametrize("ending", ["kill -9", "SIGTERM"])
def test_a_proxys_import_is_taken_over_and_only_the_rest_is_fetched(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy], ending: str
) -> None:
    """kill -9 (a lost node): the lease expires and another proxy claims the task. SIGTERM (a rolling restart):
    the proxy hands it back at once. Either way the other proxy goes on from what was received."""
    repo = repo_name("fleet")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 1024 * 1024  # 3 s for the model
    task_id = fleet[0].start(repo)
    task = _until("bytes received", lambda: (t := fleet[1].task(task_id)) and _received(t, "model.safetensors")
                  > 1024 * 1024 and t)  # fmt: skip
    owner = _owner(task, fleet)
    other = next(p for p in fleet if p is not owner)
    if ending == "kill -9":
        owner.proc.kill()  # no cleanup, no hand-back
        owner.proc.wait()
    else:
        owner.stop()
        assert owner.proc.returncode == 0
    done = _until("the take-over", lambda: (t := other.task(task_id))["state"] in ("succeeded", "failed") and t)
    assert done["state"] == "succeeded", done
    assert _owner(done, fleet) is other
    dest = tmp_path / "models"
    assert {k: v for k, v in files_under(dest).items() if not k.startswith(".artifact-import/")} == _expected(hub, repo)
    verify = subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", "verify", str(dest)], capture_output=True, text=True, cwd=ROOT
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    gets = [r for m, p, r in hub.requests if m == "GET" and p == "model.safetensors"]
    assert gets[0] is None and gets[-1] is not None, gets
    assert int(gets[-1].removeprefix("bytes=").split("-")[0]) >= 1024 * 1024, "the new owner fetched the rest only"


def test_delete_on_another_proxy_cancels_the_import_where_it_runs(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy]
) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 512 * 1024
    task_id = fleet[0].start(repo)
    task = _until("running", lambda: (t := fleet[0].task(task_id))["state"] == "running" and t)
    owner = _owner(task, fleet)
    other = next(p for p in fleet if p is not owner)
    status, cancelled = other.call("DELETE", f"/import/{task_id}")
    assert status == 200 and cancelled["state"] == "cancelled", cancelled
    assert owner.task(task_id)["state"] == "cancelled"
    dest = tmp_path / "models"
    assert not any(p.is_file() for p in dest.rglob("*")) if dest.exists() else True, files_under(dest)
    assert owner.proc.poll() is None, "the owner goes on serving"


def test_finished_tasks_are_answered_after_the_whole_fleet_restarts(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy], redis_url: str
) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, {"config.json": b"{}"})
    task_id = fleet[0].start(repo)
    _until("done", lambda: fleet[1].task(task_id)["state"] == "succeeded")
    for proxy in fleet:
        proxy.stop()
    again = Proxy(_config(tmp_path, redis_url, "c"), tmp_path / "c.log")
    try:
        assert again.task(task_id)["state"] == "succeeded"
        status, missing = again.call("GET", "/import/nope")
        assert status == 404, missing
    finally:
        again.stop()


def test_a_proxy_that_cannot_reach_the_destination_never_claims_the_task(
    hub: LocalHub, tmp_path: Path, redis_url: str
) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, {"config.json": b"{}"})
    able = Proxy(_config(tmp_path, redis_url, "able"), tmp_path / "able.log")
    unable = Proxy(_config(tmp_path, redis_url, "unable", storage="elsewhere"), tmp_path / "unable.log")
    try:
        able.proc.send_signal(signal.SIGSTOP)  # still announced for a while, but claims nothing
        task_id = unable.start(repo)  # accepted: a proxy of the fleet can reach "models"
        time.sleep(2)
        assert unable.task(task_id)["state"] == "queued", "the proxy without the storage left it alone"
        able.proc.send_signal(signal.SIGCONT)
        done = _until("done", lambda: (t := unable.task(task_id))["state"] == "succeeded" and t)
        assert _owner(done, [able, unable]) is able
        status, refused = unable.call(
            "POST", "/import", {"models": [{"repo_id": repo}], "storage_step_mappings": {"archive": "nowhere"}}
        )
        assert status == 400 and "no proxy of the fleet has a storage named 'nowhere'" in json.dumps(refused)
    finally:
        able.proc.send_signal(signal.SIGCONT)
        for proxy in (able, unable):
            proxy.stop()


def test_a_task_store_that_cannot_be_reached_stops_serve_with_one_line_and_no_password(tmp_path: Path) -> None:
    config = tmp_path / "proxy.toml"
    port = free_port()  # nothing listens there
    config.write_text(f'[server]\ntask-store = "redis://:hunter2-secret@127.0.0.1:{port}/0"\n')
    done = subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", "--config", str(config), "serve", "--port", str(free_port())],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"task store redis://127.0.0.1:{port}/0: cannot reach it" in done.stderr
    assert "hunter2" not in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('task-store = "http://cache:6379"', "must be a redis://"),
        ('task-store = "redis://:pw-not-quoted@x"\nlease = 0.5', "lease: must be a number of seconds, at least 1"),
        ('finished-ttl = "a week"', "finished-ttl: must be a number of seconds"),
    ],
)
def test_bad_fleet_settings_are_refused(tmp_path: Path, line: str, message: str) -> None:
    from artifact_import.config import load_config
    from artifact_import.errors import ConfigError

    config = tmp_path / "proxy.toml"
    config.write_text(f"[server]\n{line}\n")
    with pytest.raises(ConfigError, match=message) as raised:
        load_config(str(config))
    assert "pw-not-quoted" not in str(raised.value)


def test_a_snapshot_lists_a_bounded_number_of_files_unfinished_first() -> None:
    from artifact_import.proxy.fleet import _FILES_KEPT, _bounded

    files = [{"path": f"{i}", "state": "done"} for i in range(_FILES_KEPT + 500)] + [{"path": "x", "state": "running"}]
    bounded = _bounded({"models": [{"files": files}]})["models"][0]
    assert len(bounded["files"]) == _FILES_KEPT and bounded["files_omitted"] == 501
    assert bounded["files"][0] == {"path": "x", "state": "running"}


# --- the fleet keeps going whatever the store holds (issue 23) ------------------------------------------------


def _store(redis_url: str) -> Any:
    import redis

    return redis.Redis.from_url(redis_url, decode_responses=True)


def test_a_record_that_cannot_be_read_is_set_aside_and_every_other_task_goes_on(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy], redis_url: str
) -> None:
    store = _store(redis_url)
    early = time.time() - 60  # first in line for every claim
    bad = {
        "garbled": "{not json",
        "no-request": json.dumps({"id": "no-request", "state": "queued", "error": None, "created": early,
                                  "started": None, "finished": None, "owner": None, "models": []}),
        "wrong-shape": json.dumps(["a", "list"]),
    }  # fmt: skip
    for task_id, raw in bad.items():
        store.set(f"artifact-import:task:{task_id}", raw)
        store.zadd("artifact-import:tasks", {task_id: early})
        store.zadd("artifact-import:active", {task_id: early})
    repo = repo_name("fleet")
    hub.create_repo(repo, {"config.json": b"{}"})
    task_id = fleet[0].start(repo)
    done = _until("the good task done", lambda: (t := fleet[1].task(task_id))["state"] in ("succeeded", "failed") and t)
    assert done["state"] == "succeeded", done
    for proxy, (bad_id, raw) in zip([fleet[0], fleet[1], fleet[0]], bad.items(), strict=True):
        status, failed = proxy.call("GET", f"/import/{bad_id}")
        assert status == 200 and failed["state"] == "failed", failed
        assert failed["error"]["type"] == "TaskRecordError" and "cannot be read" in failed["error"]["message"]
        assert store.get(f"artifact-import:unreadable:{bad_id}") == raw, "kept for whoever looks into it"
        status, _ = proxy.call("DELETE", f"/import/{bad_id}")
        assert status == 200
    status, listing = fleet[1].call("GET", "/import")
    assert status == 200 and {t["id"] for t in listing["tasks"]} == {task_id, *bad}
    assert store.zrange("artifact-import:active", 0, -1) == []
    store.close()


def test_a_full_fleet_queue_is_a_429(hub: LocalHub, tmp_path: Path, redis_url: str) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, {"w.bin": 2 * 1024 * 1024})
    hub.faults.slow_bps = 512 * 1024
    config = _config(tmp_path, redis_url, "q", server="max-concurrent-imports = 1\nmax-queued-imports = 1")
    proxy = Proxy(config, tmp_path / "q.log")
    try:
        first = proxy.start(repo)
        _until("running", lambda: proxy.task(first)["state"] == "running")
        proxy.start(repo, archive="models")  # waits for the slot
        status, body = proxy.call("POST", "/import", {"models": [{"repo_id": repo}],
                                                      "storage_step_mappings": {"archive": "models"}})  # fmt: skip
        assert status == 429 and "waiting for a proxy of the fleet" in body["error"]["message"], body
    finally:
        proxy.stop()


def test_an_import_goes_on_when_redis_restarts_without_its_data(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy], redis_server: RedisServer
) -> None:
    """Redis killed and started again empty (no persistence): the running import writes its record back and
    finishes, answered by every proxy; it neither stops silently nor is run twice."""
    repo = repo_name("fleet")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 1024 * 1024  # 3 s for the model
    task_id = fleet[0].start(repo)
    task = _until("bytes received", lambda: (t := fleet[1].task(task_id)) and _received(t, "model.safetensors")
                  > 0 and t)  # fmt: skip
    owner = _owner(task, fleet)
    redis_server.restart_empty()
    done = _until("the import's end", lambda: (t := _answer(fleet[1], task_id)) and t["state"] in
                  ("succeeded", "failed", "cancelled") and t)  # fmt: skip
    assert done["state"] == "succeeded", done
    assert _owner(done, fleet) is owner, "not taken over: it never stopped"
    got = {k: v for k, v in files_under(tmp_path / "models").items() if not k.startswith(".artifact-import/")}
    assert got == _expected(hub, repo)
    assert "the task store lost its data" in owner.log.read_text()
    assert len([r for m, p, r in hub.requests if m == "GET" and p == "model.safetensors"]) == 1, "fetched once"


def test_while_redis_is_down_a_proxy_answers_503_and_try_again_then_answers_as_before(
    hub: LocalHub, fleet: list[Proxy], redis_server: RedisServer, redis_url: str
) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, {"config.json": b"{}"})
    task_id = fleet[0].start(repo)
    _until("the import's end", lambda: (t := fleet[1].task(task_id)) and t["state"] == "succeeded")
    redis_server.stop()
    try:
        for path in (f"/import/{task_id}", "/import"):
            request = urllib.request.Request(f"{fleet[1].base}{path}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=60)
            assert refused.value.code == 503, path
            assert refused.value.headers["Retry-After"] == "5"
            assert json.loads(refused.value.read())["error"]["field"] == "task-store"
    finally:
        redis_server.restart_empty()
    # The store is back (empty, as Redis without persistence restarts): the proxies answer as before.
    assert fleet[1].call("GET", "/import")[0] == 200


def test_a_task_whose_record_was_removed_stops_and_none_of_its_keys_come_back(
    hub: LocalHub, tmp_path: Path, fleet: list[Proxy], redis_url: str
) -> None:
    repo = repo_name("fleet")
    hub.create_repo(repo, FILES)
    hub.faults.slow_bps = 512 * 1024
    task_id = fleet[0].start(repo)
    _until("bytes received", lambda: _received(fleet[1].task(task_id), "model.safetensors") > 0)
    store = _store(redis_url)
    for key in store.keys(f"*{task_id}*"):  # an operator removes the task: record, events, lease
        store.delete(key)
    store.zrem("artifact-import:tasks", task_id)
    store.zrem("artifact-import:active", task_id)
    # Its lease is renewed (or found gone) every LEASE / 3 s; by then the import has stopped, and what a stray
    # write of progress or state would have brought back, it has.
    time.sleep(3 * LEASE)
    assert store.keys(f"*{task_id}*") == [], "no key of it came back"
    assert any("was removed from the task store; cancelling it" in p.log.read_text() for p in fleet)
    assert fleet[0].call("GET", f"/import/{task_id}")[0] == 404
    dest = tmp_path / "models"
    assert not any(p.is_file() for p in dest.rglob("*")) if dest.exists() else True, files_under(dest)
    store.close()


def _answer(proxy: Proxy, task_id: str) -> dict[str, Any] | None:
    """The task as ``proxy`` answers it, or None while it answers something else (the store is restarting)."""
    try:
        status, body = proxy.call("GET", f"/import/{task_id}")
    except (OSError, ValueError):  # not even JSON: a 500 while the store is down
        return None
    return dict(body) if status == 200 else None
