"""The storage-proxy routes, with a real aiohttp server and client on loopback."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from artifact_import import MANIFEST_PATH, StoragePool, VFolderID, VFSStorage, VFSVolume, VolumePool
from artifact_import.config import ServerSettings
from artifact_import.proxy.routes import create_app
from artifact_import.storages.object import MiB

from .conftest import fast_registry, files_under, in_flight_files, repo_name
from .hub import LocalHub

SCOPE = "user-1"


class Proxy:
    """A running app with a VFS volume (one vfolder) and two pool storages."""

    def __init__(self, root: Path, settings: ServerSettings) -> None:
        self.root = root
        self.registry = fast_registry()
        self.volume = VFSVolume("local", root / "vol", fsync=False)
        self.vfid = VFolderID(SCOPE, uuid.uuid4())
        self.volume.vfolder_path(self.vfid).mkdir(parents=True)
        self.pool = StoragePool(
            {
                "models": VFSStorage("models", root / "models", fsync=False),
                "scratch": VFSStorage("scratch", root / "scratch", fsync=False),
            }
        )
        self.app = create_app(
            {self.registry.name: self.registry},
            storage_pool=self.pool,
            volume_pool=VolumePool({"local": self.volume}),
            settings=settings,
        )
        self.client = TestClient(TestServer(self.app))

    @property
    def vfolder(self) -> Path:
        return self.volume.vfolder_path(self.vfid)

    def body(self, repo: str, **extra: Any) -> dict[str, Any]:
        return {"models": [{"repo_id": repo}], "vfolder_id": f"local/{self.vfid}", **extra}

    async def start(self, body: dict[str, Any]) -> str:
        resp = await self.client.post("/import", json=body)
        assert resp.status == 202, await resp.text()
        return str((await resp.json())["task_id"])

    async def status(self, task_id: str) -> dict[str, Any]:
        resp = await self.client.get(f"/import/{task_id}")
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
        return data

    async def finished(self, task_id: str) -> dict[str, Any]:
        for _ in range(1000):
            data = await self.status(task_id)
            if data["state"] in ("succeeded", "failed", "cancelled"):
                return data
            await asyncio.sleep(0.02)
        raise AssertionError(f"task {task_id} did not finish")


def part_files(root: Path) -> list[Path]:
    return in_flight_files(root)


@pytest.fixture
async def make_proxy(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Proxy] = []

    async def make(**settings: Any) -> Proxy:
        proxy = Proxy(tmp_path / f"p{len(made)}", ServerSettings(**settings))
        await proxy.client.start_server()
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        await proxy.client.close()


async def test_post_answers_202_at_once_and_the_task_can_be_followed_to_success(hub: LocalHub, make_proxy: Any) -> None:
    repo = repo_name("srv")
    hub.create_repo(repo, {"config.json": b"{}", "model.safetensors": 2 * MiB})
    proxy = await make_proxy()
    resp = await proxy.client.post("/import", json=proxy.body(repo))
    assert resp.status == 202
    accepted = await resp.json()
    assert accepted["state"] in ("queued", "running") and accepted["links"]["events"].endswith("/events")
    done = await proxy.finished(accepted["task_id"])
    assert done["state"] == "succeeded", done
    (model,) = done["models"]
    assert model["destination"].startswith(f"vfolder_storage_{accepted['task_id']}")
    files = {f["path"]: f for f in model["files"]}
    assert files["model.safetensors"]["bytes_done"] == files["model.safetensors"]["bytes_total"] == 2 * MiB
    assert {v["verifier"] for v in files["model.safetensors"]["verdicts"]} >= {"checksum", "safetensors"}
    assert (proxy.vfolder / "model.safetensors").stat().st_size == 2 * MiB
    assert (proxy.vfolder / MANIFEST_PATH).exists()
    listing = await (await proxy.client.get("/import")).json()
    assert [t["id"] for t in listing["tasks"]] == [accepted["task_id"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([1, 2], "body"),
        ({}, "models"),
        ({"models": []}, "models"),
        ({"models": [{"repo": "a/b"}]}, "models[0].repo"),
        ({"models": [{"revision": "main"}]}, "models[0].repo_id"),
        ({"models": [{"repo_id": "not a repo"}]}, "models[0]"),
        ({"models": [{"repo_id": "a/b", "revision": 3}]}, "models[0].revision"),
        ({"models": [{"repo_id": "a/b"}], "registry_name": "nope"}, "registry_name"),
        ({"models": [{"repo_id": "a/b"}]}, "vfolder_id"),
        ({"models": [{"repo_id": "a/b"}], "vfolder_id": "local/user-1/zz"}, "vfolder_id"),
        ({"models": [{"repo_id": "a/b"}], "vfolder_id": f"elsewhere/u/{uuid.uuid4().hex}"}, "vfolder_id"),
        ({"models": [{"repo_id": "a/b"}], "vfolder_id": f"local/u/{uuid.uuid4().hex}/../x"}, "vfolder_id"),
        (
            {"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "nope"}},
            "storage_step_mappings.archive",
        ),
        (
            {"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"upload": "models"}},
            "storage_step_mappings.upload",
        ),
        ({"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "include": "*"}, "include"),
        ({"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "extra": 1}, "extra"),
    ],
)
async def test_a_malformed_body_is_a_400_naming_the_field(make_proxy: Any, body: Any, field: str) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/import", json=body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["field"] == field, error
    assert error["message"]
    assert (await (await proxy.client.get("/import")).json())["tasks"] == [], "no task was started"


async def test_a_body_that_is_not_json_is_a_400(make_proxy: Any) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/import", data=b"{not json", headers={"Content-Type": "application/json"})
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "body"


async def test_unknown_task_is_a_404(make_proxy: Any) -> None:
    proxy = await make_proxy()
    for method in ("GET", "DELETE"):
        resp = await proxy.client.request(method, "/import/nope")
        assert resp.status == 404 and (await resp.json())["error"]["field"] == "task_id"
    assert (await proxy.client.get("/import/nope/events")).status == 404


async def test_storage_step_mappings_stage_and_archive_several_models_each_in_its_folder(
    hub: LocalHub, make_proxy: Any
) -> None:
    repos = [repo_name("srv") for _ in range(2)]
    for repo in repos:
        hub.create_repo(repo, {"config.json": repo.encode(), "w.bin": MiB})
    proxy = await make_proxy()
    body = {
        "models": [{"repo_id": r, "revision": "main"} for r in repos],
        "storage_step_mappings": {"download": "scratch", "verify": "scratch", "archive": "models"},
    }
    done = await proxy.finished(await proxy.start(body))
    assert done["state"] == "succeeded", done
    for repo in repos:
        assert (proxy.root / "models" / repo / "config.json").read_bytes() == repo.encode()
    assert not [p for p in (proxy.root / "scratch").rglob("*") if p.is_file()], "staged copies removed"


async def test_delete_cancels_and_cleans_up_as_a_failure_does(hub: LocalHub, make_proxy: Any) -> None:
    repo = repo_name("srv")
    hub.create_repo(repo, {"w.bin": 8 * MiB, "config.json": b"{}"})
    hub.faults.slow_bps = 2 * MiB
    proxy = await make_proxy()
    task_id = await proxy.start(proxy.body(repo))
    for _ in range(300):
        data = await proxy.status(task_id)
        if any(f["bytes_done"] for f in data["models"][0]["files"]):
            break
        await asyncio.sleep(0.02)
    resp = await proxy.client.delete(f"/import/{task_id}")
    assert resp.status == 200 and (await resp.json())["state"] == "cancelled"
    assert files_under(proxy.vfolder) == {}
    assert part_files(proxy.root) == []


async def test_events_stream_progress_until_the_task_ends(hub: LocalHub, make_proxy: Any) -> None:
    repo = repo_name("srv")
    hub.create_repo(repo, {"w.bin": 4 * MiB, "config.json": b"{}"})
    hub.faults.slow_bps = 16 * MiB
    proxy = await make_proxy()
    task_id = await proxy.start(proxy.body(repo))
    resp = await proxy.client.get(f"/import/{task_id}/events")
    assert resp.headers["Content-Type"] == "text/event-stream"
    events: list[tuple[str, dict[str, Any]]] = []
    kind = ""
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            kind = line[len("event: ") :]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[len("data: ") :])))
    states = [d["state"] for k, d in events if k == "state"]
    assert states[-1] == "succeeded" and "running" in states
    progress = [d["bytes_done"] for k, d in events if k == "file" and d["path"] == "w.bin"]
    assert progress and max(progress) == 4 * MiB
    assert any(0 < b < 4 * MiB for b in progress), "progress arrives while the file streams"


async def test_excess_imports_queue_and_say_so(hub: LocalHub, make_proxy: Any) -> None:
    repos = [repo_name("srv") for _ in range(2)]
    for repo in repos:
        hub.create_repo(repo, {"w.bin": 4 * MiB})
    hub.faults.slow_bps = 8 * MiB
    proxy = await make_proxy(max_concurrent_imports=1)
    first = await proxy.start(proxy.body(repos[0], request_id="first"))
    second = await proxy.start({**proxy.body(repos[1]), "vfolder_id": f"local/{proxy.vfid}/second"})
    await asyncio.sleep(0.2)
    assert (await proxy.status(first))["state"] == "running"
    assert (await proxy.status(second))["state"] == "queued"
    assert (await proxy.finished(first))["state"] == "succeeded"
    assert (await proxy.finished(second))["state"] == "succeeded"
    assert first == "first"


async def test_completion_webhooks_are_retried_and_never_hold_the_import(hub: LocalHub, make_proxy: Any) -> None:
    received: list[dict[str, Any]] = []
    answers = [503, 503, 200]

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(status=answers.pop(0) if answers else 200)

    async def slow_hook(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response()

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    receiver.router.add_post("/slow", slow_hook)
    async with TestServer(receiver) as server:
        repo = repo_name("srv")
        hub.create_repo(repo, {"config.json": b"{}"})
        proxy = await make_proxy(
            webhooks=(str(server.make_url("/hook")) + "?token=s3cret", str(server.make_url("/slow"))),
            webhook_backoff=0.01,
        )
        (proxy.vfolder / "config.json").write_bytes(b"the user's own")  # replaced, and the webhook says so
        task_id = await proxy.start(proxy.body(repo, replace_existing=True))
        assert (await proxy.finished(task_id))["state"] == "succeeded", "the slow receiver does not hold it"
        for _ in range(200):
            if len(received) == 3:
                break
            await asyncio.sleep(0.02)
        assert len(received) == 3, "two 503s, then delivered"
        payload = received[-1]
        assert payload["event"] == "import.finished" and payload["id"] == task_id
        assert payload["state"] == "succeeded" and payload["models"][0]["file_count"] == 1
        assert payload["models"][0]["replaced"] == ["config.json"]


async def test_shutdown_cancels_running_imports_and_leaves_nothing_half_written(hub: LocalHub, make_proxy: Any) -> None:
    repo = repo_name("srv")
    hub.create_repo(repo, {"w.bin": 8 * MiB})
    hub.faults.slow_bps = 2 * MiB
    proxy = await make_proxy()
    task_id = await proxy.start(proxy.body(repo))
    for _ in range(300):
        if part_files(proxy.root):
            break
        await asyncio.sleep(0.02)
    assert part_files(proxy.root), "the import is writing"
    await proxy.client.close()
    assert part_files(proxy.root) == []
    assert files_under(proxy.vfolder) == {}
    from artifact_import.proxy.routes import SERVICE

    assert proxy.app[SERVICE].get(task_id).state.value == "cancelled"


# --- a security boundary: who may call, what a body may hold, what a client may hold (issue 23) -------------

TOKEN = "s3cret-token-for-the-proxy-0123456789"


async def test_every_route_needs_the_token_in_either_header_and_a_401_says_nothing_about_tasks(
    hub: LocalHub, make_proxy: Any
) -> None:
    repo = repo_name("auth")
    hub.create_repo(repo, {"w.bin": 4 * MiB})
    hub.faults.slow_bps = 2 * MiB
    proxy = await make_proxy(auth_token=TOKEN)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    resp = await proxy.client.post("/import", json=proxy.body(repo), headers=bearer)
    assert resp.status == 202
    task_id = (await resp.json())["task_id"]
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {TOKEN}"},
             {"X-BackendAI-Storage-Auth-Token": TOKEN[:-1]}]  # fmt: skip
    answers = set()
    for headers in wrong:
        for method, path in [
            ("POST", "/import"),
            ("GET", "/import"),
            ("GET", f"/import/{task_id}"),
            ("GET", "/import/no-such-task"),
            ("DELETE", f"/import/{task_id}"),
            ("GET", f"/import/{task_id}/events"),
            ("GET", "/elsewhere"),
        ]:
            resp = await proxy.client.request(method, path, headers=headers, json=proxy.body(repo))
            assert resp.status == 401, (method, path, headers, resp.status)
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            answers.add(await resp.text())
    assert len(answers) == 1, "the same answer whether a task exists or not"
    assert task_id not in answers.pop()
    for headers in (bearer, {"X-BackendAI-Storage-Auth-Token": TOKEN}):
        resp = await proxy.client.get(f"/import/{task_id}", headers=headers)
        assert resp.status == 200 and (await resp.json())["state"] in ("queued", "running")
    resp = await proxy.client.get("/import", headers=bearer)
    assert [t["id"] for t in (await resp.json())["tasks"]] == [task_id], "the refused POSTs started nothing"


async def test_an_app_mounted_behind_its_own_check_can_leave_the_token_out(make_proxy: Any) -> None:
    registry = fast_registry()
    app = create_app({registry.name: registry}, settings=ServerSettings(auth_token=TOKEN), authenticate=False)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/import")).status == 200


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"models": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "body"),
        (b'{"models": [{"repo_id": "a/b", "revision": ' + b"9" * 5000 + b'}], "vfolder_id": "x"}',
         "models[0].revision"),
        (b'{"request_id": ' + b"1" * 5000 + b', "models": [{"repo_id": "a/b"}], '
         b'"storage_step_mappings": {"archive": "models"}}', "request_id"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "request_id": ".."}',
         "request_id"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "request_id": "a/b"}',
         "request_id"),
        (b'{"models": [{"repo_id": "\\ud800/x"}], "storage_step_mappings": {"archive": "models"}}',
         "models[0].repo_id"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "include": [1]}',
         "include[0]"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": {"a": [1]}}}',
         "storage_step_mappings.archive"),
        (b'{"models": [{"repo_id": "a/b"}], "vfolder_id": {"volume": {"a": 1}, "quota_scope_id": "u", '
         b'"folder_id": "f"}}', "vfolder_id.volume"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, '
         b'"replace_existing": "yes"}', "replace_existing"),
        (b'{"models": [{"repo_id": "a/b"}], "storage_step_mappings": {"archive": "models"}, "include": "'
         + b"x" * (300 * 1024) + b'"}', "body"),
        (b"\xff\xfe{not utf-8", "body"),
    ],
    ids=["deep", "huge-int", "huge-int-top", "dot-dot-id", "slash-id", "surrogate", "int-pattern", "nested-name",
         "nested-volume", "not-bool", "too-large", "not-utf8"],
)  # fmt: skip
async def test_a_hostile_body_is_a_400_naming_the_field_never_a_500(make_proxy: Any, raw: bytes, field: str) -> None:
    proxy = await make_proxy()
    resp = await proxy.client.post("/import", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status in (400, 413), (resp.status, await resp.text())
    assert (await resp.json())["error"]["field"] == field
    assert (await (await proxy.client.get("/import")).json())["tasks"] == [], "no task was started"


@pytest.mark.parametrize("task_id", ["a.b", "x" * 200, "a%20b", "-x", "a..b"])
async def test_a_task_id_that_is_not_one_is_a_400(make_proxy: Any, task_id: str) -> None:
    proxy = await make_proxy()
    for method in ("GET", "DELETE"):
        resp = await proxy.client.request(method, f"/import/{task_id}")
        assert resp.status == 400 and (await resp.json())["error"]["field"] == "task_id"


async def test_a_full_queue_is_a_429_with_retry_after(hub: LocalHub, make_proxy: Any) -> None:
    repos = [repo_name("queue") for _ in range(3)]
    for repo in repos:
        hub.create_repo(repo, {"w.bin": 4 * MiB})
    hub.faults.slow_bps = 1 * MiB
    proxy = await make_proxy(max_concurrent_imports=1, max_queued_imports=1)
    running = await proxy.start(proxy.body(repos[0], request_id="running"))
    await proxy.start({**proxy.body(repos[1]), "vfolder_id": f"local/{proxy.vfid}/second"})
    resp = await proxy.client.post("/import", json={**proxy.body(repos[2]), "vfolder_id": f"local/{proxy.vfid}/x"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    assert "waiting for a slot" in (await resp.json())["error"]["message"]
    assert len((await (await proxy.client.get("/import")).json())["tasks"]) == 2
    await proxy.client.delete(f"/import/{running}")  # the queued one starts: room again
    for _ in range(100):
        if (await proxy.client.get("/import")).status == 200 and not [
            t for t in (await (await proxy.client.get("/import")).json())["tasks"] if t["state"] == "queued"
        ]:
            break
        await asyncio.sleep(0.05)
    await proxy.start({**proxy.body(repos[2]), "vfolder_id": f"local/{proxy.vfid}/x"})


async def test_event_streams_are_bounded_per_client_and_in_all(hub: LocalHub, make_proxy: Any) -> None:
    import aiohttp

    repo = repo_name("streams")
    hub.create_repo(repo, {"w.bin": 8 * MiB})
    hub.faults.slow_bps = 1 * MiB
    proxy = await make_proxy(max_event_streams=3, max_event_streams_per_client=2)
    task_id = await proxy.start(proxy.body(repo))
    url = str(proxy.client.make_url(f"/import/{task_id}/events"))
    sessions = {
        host: aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(host, 0)))
        for host in ("127.0.0.1", "127.0.0.2")
    }
    held: list[aiohttp.ClientResponse] = []
    try:
        for _ in range(2):
            held.append(await sessions["127.0.0.1"].get(url))
        assert [r.status for r in held] == [200, 200]
        third = await sessions["127.0.0.1"].get(url)
        assert third.status == 429 and int(third.headers["Retry-After"]) > 0, "over this client's share"
        held.append(await sessions["127.0.0.2"].get(url))
        assert held[-1].status == 200, "another client has its own share"
        fourth = await sessions["127.0.0.2"].get(url)
        assert fourth.status == 503 and int(fourth.headers["Retry-After"]) > 0, "over what the server holds"
        held.pop(0).close()
        for _ in range(100):  # the server sees the close when it next writes to that stream
            again = await sessions["127.0.0.2"].get(url)
            if again.status == 200:
                held.append(again)
                break
            again.release()
            await asyncio.sleep(0.05)
        assert held[-1].status == 200 and len(held) == 3, "a closed stream's slot is free again"
        assert (await proxy.status(task_id))["state"] in ("queued", "running"), "the import goes on"
    finally:
        for r in held:
            r.close()
        for session in sessions.values():
            await session.close()


async def test_through_the_api_a_users_own_file_is_not_replaced_unless_the_request_says_so(
    hub: LocalHub, make_proxy: Any
) -> None:
    repo = repo_name("theirs")
    hub.create_repo(repo, {"config.json": b'{"from": "hub"}', "w.bin": 4096})
    proxy = await make_proxy()
    (proxy.vfolder / "config.json").write_bytes(b'{"mine": true}')
    failed = await proxy.finished(await proxy.start(proxy.body(repo)))
    assert failed["state"] == "failed" and failed["error"]["type"] == "DestinationConflictError", failed
    assert "config.json" in failed["error"]["message"]
    assert files_under(proxy.vfolder) == {"config.json": b'{"mine": true}'}, "nothing written"
    done = await proxy.finished(await proxy.start(proxy.body(repo, replace_existing=True)))
    assert done["state"] == "succeeded", done
    assert done["models"][0]["result"]["replaced"] == ["config.json"]
    assert (proxy.vfolder / "config.json").read_bytes() == b'{"from": "hub"}'
