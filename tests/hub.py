"""A local Hugging Face-compatible hub, faithful enough for ``snapshot_download``.

It serves generated repositories with the endpoints and headers the real Hub
uses, and has switches to inject faults (dropped connections, flipped bytes,
5xx/429 answers, slow bodies). Used by the tests (in a thread of the test
process), and run as a program by the demo and the benchmarks::

    python -m tests.hub serve --repo demo/tiny-model --demo --port 0
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gzip
import hashlib
import itertools
import json
import os
import random
import re
import ssl
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

try:
    from aiohttp import web
    from yarl import URL
except ImportError:
    if __name__ == "__main__":  # run by hand with a Python outside the project's venv
        raise SystemExit(
            "the local hub needs the project's venv (aiohttp): ./scripts/setup.sh, then "
            ".venv/bin/python -m tests.hub serve --demo"
        ) from None
    raise

#: Files at least this big are stored as LFS files (sha256 published), like weights on the Hub.
DEFAULT_LFS_THRESHOLD = 10 * 1024
#: A query parameter on redirected LFS URLs, standing in for a CDN signature that must never be logged.
SIGNATURE = "X-Amz-Signature=hubsecretsignature0123456789"
_BLOCK = 1 << 20


@dataclass
class HubFile:
    path: str
    disk: Path
    size: int
    sha256: str
    git_sha1: str
    lfs: bool

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.git_sha1

    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n").encode()


#: How the Hub's URLs name each kind of repository: ``/datasets/ORG/NAME/resolve/...``, ``/api/datasets/ORG/NAME``.
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_API_PATH = re.compile(
    r"^/api/(?P<kind>models|datasets|spaces)/(?P<repo>[^/]+(?:/[^/]+)?)"
    r"(?:/(?P<op>revision|tree|paths-info)/(?P<rest>.+))?$"
)
_RESOLVE_PATH = re.compile(
    r"^/(?P<kind>datasets/|spaces/)?(?P<repo>[^/]+(?:/[^/]+)?)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"
)


def _plain_id(key: str) -> str:
    """The repository id the Hub reports (``ORG/NAME``), without the URL prefix of its kind."""
    for prefix in ("datasets/", "spaces/"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


@dataclass
class HubRepo:
    repo_id: str
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    #: Requests must carry ``Authorization: Bearer <token>``; others get 401 "RepoNotFound".
    token: str | None = None
    #: Listing works, file downloads need a token (403 "GatedRepo"), as on the Hub.
    gated: bool = False

    def resolve(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


@dataclass
class Faults:
    """Switches, consumed per request, keyed by the path of the file in its repo."""

    #: Close the connection after this many body bytes; one entry per request (None: serve that one whole).
    drop_after: dict[str, list[int | None]] = field(default_factory=dict)
    #: Stop sending (without closing) after this many body bytes, for ``stall_seconds``; one entry per request.
    stall_after: dict[str, list[int]] = field(default_factory=dict)
    stall_seconds: float = 30.0
    #: Flip the byte at this offset in every response for the file.
    flip_byte: dict[str, int] = field(default_factory=dict)
    #: Answer with these statuses (and Retry-After values), one per request, before serving (0: serve that one).
    errors: dict[str, list[tuple[int, str | None]]] = field(default_factory=dict)
    #: Bytes per second for every body (0: as fast as possible).
    slow_bps: int = 0
    #: Serve a ``Range`` request as a full ``200`` response, like servers that ignore ranges.
    ignore_range: bool = False
    #: List the file with this size instead of its real one (a listing that lies).
    listed_size: dict[str, int] = field(default_factory=dict)
    #: Accept the revision and tree calls and never answer them (a stalled listing).
    stall_listing: bool = False
    #: From this GET of the file on (1-based), serve it with another ETag (the file changed mid-download).
    etag_changes_at: dict[str, int] = field(default_factory=dict)
    #: Seconds a redirect's signed CDN URL stays valid (CloudFront's ``Expires``); later requests get 403.
    cdn_url_lifetime: float | None = None
    #: A hostile hub: the commit id its revision call answers, and the X-Repo-Commit of its file responses.
    answered_sha: str | None = None
    served_commit: str | None = None
    #: Answer every file request with a redirect to this location (e.g. file:///etc/passwd, or the same URL).
    redirect_to: str | None = None
    #: Answer every file request with bytes that are not an HTTP response.
    garbage_response: bool = False
    #: Send the file one byte at a time, this many seconds apart (a source that trickles).
    trickle: dict[str, float] = field(default_factory=dict)
    #: Send the file compressed with this Content-Encoding (e.g. "gzip"), whatever the client accepts.
    content_encoding: dict[str, str] = field(default_factory=dict)
    #: Announce this many bytes more than the body has (Content-Length), then hold the connection open.
    extra_length: dict[str, int] = field(default_factory=dict)
    #: Link the next page of a tree listing on this origin (``scheme://host:port``) instead of the hub's.
    next_link_origin: str | None = None
    #: A hostile hub: the next page of its tree listing is on this base URL (another host).
    tree_next_base: str | None = None


#: How the Hub lists a file its scanners found clean.
SAFE_SCAN: dict[str, Any] = {
    "status": "safe",
    "avScan": {"virusFound": False, "virusNames": None},
    "pickleImportScan": {"highestSafetyLevel": "innocuous", "imports": []},
}


def unsafe_scan(virus: str | None = None, imports: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    """How the Hub lists a file its scanners flag: a virus, or dangerous pickle imports."""
    dangerous = [{"module": m, "name": n, "safety": "dangerous"} for m, n in imports]
    return {
        "status": "unsafe",
        "avScan": {"virusFound": virus is not None, "virusNames": [virus] if virus else None},
        "pickleImportScan": {
            "highestSafetyLevel": "dangerous" if dangerous else "innocuous",
            "imports": dangerous,
        },
    }


def safetensors_header(size: int) -> bytes:
    """The header of a valid safetensors file of ``size`` bytes holding one U8 tensor."""
    for width in range(64, 1024, 8):
        data = size - 8 - width
        meta = {"__metadata__": {"format": "pt"}, "weight": {"dtype": "U8", "shape": [data], "data_offsets": [0, data]}}
        text = json.dumps(meta).encode()
        if len(text) <= width:
            return struct.pack("<Q", width) + text.ljust(width)
    raise ValueError(f"no safetensors header fits a file of {size} bytes")


def git_blob_sha1(data_size: int, digest_input: Iterable[bytes]) -> str:
    h = hashlib.sha1(b"blob %d\x00" % data_size)
    for chunk in digest_input:
        h.update(chunk)
    return h.hexdigest()


class LocalHub:
    def __init__(self, data_dir: Path, *, lfs_threshold: int = DEFAULT_LFS_THRESHOLD) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.lfs_threshold = lfs_threshold
        self.repos: dict[str, HubRepo] = {}
        self.faults = Faults()
        self.lfs_redirect = True
        #: (method, path in repo or URL path, Range header) of every content request.
        self.requests: list[tuple[str, str, str | None]] = []
        #: The path of every API call (revision, tree, model info).
        self.api_requests: list[str] = []
        #: (method, path) of every request the hub has no route for.
        self.unknown_requests: list[tuple[str, str]] = []
        self.base_url = ""
        #: Redirect target for LFS files: another loopback host, as the Hub redirects to a CDN. Set before
        #: the server starts to redirect to a CDN of one's own (nginx serving ``data_dir/blobs``, see
        #: tests/nginx.py); otherwise the hub serves them itself on 127.0.0.2.
        self.cdn_url = ""
        #: Redirects to the CDN handed out (each a freshly signed URL).
        self.redirects = 0
        #: Entries per page of a tree listing (the Hub's pages hold about a thousand).
        self.tree_page_size = 1000
        #: Keep each listing once built (for a repository of many files, whose every page would otherwise
        #: build it all again); only where nothing changes the listing (``serve``), not in the tests.
        self.cache_listings = False
        self._listings: dict[tuple[object, ...], list[dict[str, Any]]] = {}
        #: The Hub's own scan of a file ((repo id, path) -> ``securityFileStatus``), listed with ``expand=true``;
        #: files not here are listed as scanned and safe, as the Hub lists clean files.
        self.scans: dict[tuple[str, str], dict[str, Any]] = {}
        #: (scheme, host:port, path) of every request that carried an Authorization header: where tokens went.
        self.authorized: list[tuple[str, str, str]] = []

    # --- building repositories -------------------------------------------------

    def _store(self, path: str, content: bytes | int, seed: int) -> HubFile:
        """Write a blob; ``content`` is bytes, or a size of pseudo-random bytes to generate."""
        tmp = self.data_dir / f"tmp-{os.getpid()}-{threading.get_ident()}-{random.random()}"
        sha256 = hashlib.sha256()
        sha1 = hashlib.sha1()
        size = len(content) if isinstance(content, bytes) else content
        sha1.update(b"blob %d\x00" % size)
        with open(tmp, "wb") as out:
            if isinstance(content, bytes):
                blocks: Iterable[bytes] = [content]
            else:
                rng = random.Random(seed)
                head = safetensors_header(size) if path.endswith(".safetensors") else b""
                body = size - len(head)
                blocks = itertools.chain(
                    [head], (rng.randbytes(min(_BLOCK, body - off)) for off in range(0, body, _BLOCK))
                )
            for block in blocks:
                sha256.update(block)
                sha1.update(block)
                out.write(block)
        disk = self.data_dir / "blobs" / sha256.hexdigest()
        disk.parent.mkdir(exist_ok=True)
        os.replace(tmp, disk)
        return HubFile(path, disk, size, sha256.hexdigest(), sha1.hexdigest(), size >= self.lfs_threshold)

    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes | int],
        *,
        branch: str = "main",
        tags: Iterable[str] = (),
        token: str | None = None,
        gated: bool = False,
        repo_type: str = "model",
    ) -> str:
        """A repository; ``self.repos`` keys it as the Hub's URLs do (``datasets/ORG/NAME`` for a dataset)."""
        repo_id = f"{_URL_PREFIX[repo_type]}{repo_id}"
        repo = self.repos.setdefault(repo_id, HubRepo(repo_id))
        repo.token = token
        repo.gated = gated
        return self.commit(repo_id, files, branch=branch, tags=tags)

    def commit(
        self, repo_id: str, files: Mapping[str, bytes | int], *, branch: str = "main", tags: Iterable[str] = ()
    ) -> str:
        repo = self.repos[repo_id]
        stored = {
            path: self._store(path, content, seed=zlib.crc32(f"{repo_id}\0{path}\0{len(repo.commits)}".encode()))
            for path, content in files.items()
        }
        digest = hashlib.sha1(repo_id.encode())
        digest.update(str(len(repo.commits)).encode())
        for path in sorted(stored):
            digest.update(f"{path}\0{stored[path].etag}\0".encode())
        sha = digest.hexdigest()
        repo.commits[sha] = stored
        repo.refs[branch] = sha
        for tag in tags:
            repo.refs[tag] = sha
        return sha

    # --- HTTP --------------------------------------------------------------------

    def app(self) -> web.Application:
        @web.middleware
        async def record_tokens(request: web.Request, handler: Any) -> web.StreamResponse:
            if "Authorization" in request.headers:
                self.authorized.append((request.scheme, request.host, request.path))
            response: web.StreamResponse = await handler(request)
            return response

        app = web.Application(middlewares=[record_tokens])
        r = app.router
        r.add_get("/lfs/{sha256}", self._lfs)
        # Repository ids are ORG/NAME or NAME alone, under /api/{models,datasets,spaces}/ and (for content)
        # behind a datasets/ or spaces/ prefix: parsed here rather than by one route per shape.
        r.add_get("/{tail:.+}", self._route)
        r.add_post("/{tail:.+}", self._route)
        return app

    async def _route(self, request: web.Request) -> web.StreamResponse:
        raw = request.raw_path.split("?", 1)[0]
        api = _API_PATH.match(raw)
        if api is not None:
            self.api_requests.append(raw)
            key = f"{_URL_PREFIX[api['kind'].removesuffix('s')]}{unquote(api['repo'])}"
            rev, _, path = (api["rest"] or "").partition("/")
            if (request.method == "POST") != (api["op"] == "paths-info"):
                return web.Response(status=405)
            if api["op"] is None:
                return await self._model_info(request, key, "main")
            if api["op"] == "revision":
                return await self._model_info(request, key, unquote(api["rest"]))
            if api["op"] == "paths-info":
                return await self._paths_info(request, key, unquote(api["rest"]))
            return await self._tree(request, key, unquote(rev), unquote(path))
        content = _RESOLVE_PATH.match(raw)
        if content is not None and request.method in ("GET", "HEAD"):
            key = f"{content['kind'] or ''}{unquote(content['repo'])}"
            return await self._resolve(request, key, unquote(content["rev"]), unquote(content["path"]))
        self.unknown_requests.append((request.method, raw))
        return web.Response(status=404)

    async def _maybe_stall(self) -> None:
        while self.faults.stall_listing:  # noqa: ASYNC110 - a plain switch, flipped by tests from another thread
            await asyncio.sleep(0.1)

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"error": message}, status=status, headers={"X-Error-Code": code, "X-Error-Message": message}
        )

    def _repo(self, request: web.Request, repo_id: str, *, content: bool) -> HubRepo | web.Response:
        repo = self.repos.get(repo_id)
        auth = request.headers.get("Authorization", "")
        if repo is None or (repo.token is not None and auth != f"Bearer {repo.token}"):
            return self._error(401, "RepoNotFound", "Repository not found")
        if content and repo.gated and not auth.startswith("Bearer "):
            return self._error(403, "GatedRepo", "Access to this model is restricted. You must have access to it.")
        return repo

    def _lookup(
        self, request: web.Request, repo_id: str, rev: str, *, content: bool
    ) -> tuple[HubRepo, str, dict[str, HubFile]] | web.Response:
        """The repository and commit a request names, or the error the Hub would answer."""
        repo = self._repo(request, repo_id, content=content)
        if isinstance(repo, web.Response):
            return repo
        sha = repo.resolve(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, sha, repo.commits[sha]

    async def _model_info(self, request: web.Request, repo_id: str, rev: str) -> web.Response:
        await self._maybe_stall()
        found = self._lookup(request, repo_id, rev, content=False)
        if isinstance(found, web.Response):
            return found
        repo, sha, files = found
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings = []
        for f in files.values():
            entry: dict[str, Any] = {"rfilename": f.path}
            if blobs:
                size = self.faults.listed_size.get(f.path, f.size)
                entry["size"] = size
                entry["blobId"] = git_blob_sha1(len(f.pointer()), [f.pointer()]) if f.lfs else f.git_sha1
                if f.lfs:
                    entry["lfs"] = {"sha256": f.sha256, "size": size, "pointerSize": len(f.pointer())}
            siblings.append(entry)
        now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        return web.json_response(
            {
                "_id": hashlib.md5(repo.repo_id.encode()).hexdigest()[:24],
                "id": _plain_id(repo.repo_id),
                "modelId": _plain_id(repo.repo_id),
                "author": _plain_id(repo.repo_id).split("/")[0],
                "sha": self.faults.answered_sha if self.faults.answered_sha is not None else sha,
                "lastModified": now,
                "createdAt": now,
                "private": repo.token is not None,
                "gated": "auto" if repo.gated else False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "library_name": "transformers",
                "siblings": siblings,
            }
        )

    def _file_entry(self, repo: HubRepo, f: HubFile, sha: str, *, expand: bool) -> dict[str, Any]:
        """A file as tree and paths-info listings show it."""
        size = self.faults.listed_size.get(f.path, f.size)
        entry: dict[str, Any] = {"type": "file", "size": size, "path": f.path}
        if f.lfs:
            entry["oid"] = git_blob_sha1(len(f.pointer()), [f.pointer()])
            entry["lfs"] = {"oid": f.sha256, "size": size, "pointerSize": len(f.pointer())}
        else:
            entry["oid"] = f.git_sha1
        if expand:
            entry["lastCommit"] = {"id": sha, "title": "Upload", "date": "2026-11-01T00:00:00.000Z"}
            entry["securityFileStatus"] = self.scans.get((repo.repo_id, f.path), SAFE_SCAN)
        return entry

    async def _paths_info(self, request: web.Request, repo_id: str, rev: str) -> web.Response:
        """``POST /api/models/REPO/paths-info/REV`` (``HfApi.get_paths_info``): the named paths; others ignored."""
        found = self._lookup(request, repo_id, rev, content=False)
        if isinstance(found, web.Response):
            return found
        repo, sha, files = found
        form = await request.post()
        expand = str(form.get("expand", "")).lower() == "true"
        entries = []
        for path in form.getall("paths", []):
            path = str(path).strip("/")
            if path in files:
                entries.append(self._file_entry(repo, files[path], sha, expand=expand))
            elif any(p.startswith(f"{path}/") for p in files):
                oid = hashlib.sha1(path.encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": path})
        return web.json_response(entries)

    async def _tree(self, request: web.Request, repo_id: str, rev: str, path: str) -> web.Response:
        await self._maybe_stall()
        found = self._lookup(request, repo_id, rev, content=False)
        if isinstance(found, web.Response):
            return found
        repo, sha, files = found
        base = path.strip("/")
        prefix = f"{base}/" if base else ""
        recursive = request.query.get("recursive", "").lower() == "true"
        expand = request.query.get("expand", "").lower() == "true"
        key = (repo.repo_id, sha, base, recursive, expand)
        listed = self._listings.get(key) if self.cache_listings else None
        if listed is None:
            listed = self._list(repo, sha, files, prefix, recursive, expand)
            if self.cache_listings:
                self._listings[key] = listed
        if base and not listed:
            return self._error(404, "EntryNotFound", f"{base} does not exist")
        # Paged as the Hub pages it: a Link header with rel="next" and an opaque cursor.
        start = int(request.query.get("cursor", "0"))
        page = listed[start : start + self.tree_page_size]
        headers = {}
        if start + self.tree_page_size < len(listed):
            query = {k: v for k, v in request.query.items() if k != "cursor"}
            query["cursor"] = str(start + self.tree_page_size)
            next_url = str(request.url.with_query(query))
            if self.faults.tree_next_base is not None:
                next_url = self.faults.tree_next_base + request.url.with_query(query).path_qs
            if self.faults.next_link_origin is not None:
                next_url = str(URL(self.faults.next_link_origin).with_path(request.url.path).with_query(query))
            headers["Link"] = f'<{next_url}>; rel="next"'
        return web.json_response(page, headers=headers)

    def _list(
        self, repo: HubRepo, sha: str, files: dict[str, HubFile], prefix: str, recursive: bool, expand: bool
    ) -> list[dict[str, Any]]:
        entries: dict[str, dict[str, Any]] = {}
        for f in sorted(files.values(), key=lambda f: f.path):
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix) :].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    oid = hashlib.sha1(folder.encode()).hexdigest()
                    entries.setdefault(folder, {"type": "directory", "oid": oid, "size": 0, "path": folder})
            if recursive or len(rest) == 1:
                entries[f.path] = self._file_entry(repo, f, sha, expand=expand)
        return list(entries.values())

    async def _resolve(self, request: web.Request, repo_id: str, rev: str, path: str) -> web.StreamResponse:
        if self.faults.redirect_to is not None:
            target = request.url.path if self.faults.redirect_to == "self" else self.faults.redirect_to
            return web.Response(status=302, headers={"Location": target})
        if self.faults.garbage_response and request.transport is not None:
            request.transport.write(b"HTTX/9.9 two hundred\r\nthis is: not http\r\n\r\n")
            request.transport.close()
            raise web.HTTPBadRequest()  # never sent: the connection is closed
        found = self._lookup(request, repo_id, rev, content=True)
        if isinstance(found, web.Response):
            return found
        _, sha, files = found
        f = files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        headers = {
            "X-Repo-Commit": self.faults.served_commit or sha,
            "ETag": f'"{f.etag}"',
            "Accept-Ranges": "bytes",
        }
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(f.size)
            if self.lfs_redirect:
                location = f"{self.cdn_url}/lfs/{f.sha256}?{SIGNATURE}"
                if self.faults.cdn_url_lifetime is not None:
                    location += f"&Expires={time.time() + self.faults.cdn_url_lifetime:.3f}"
                self.redirects += 1
                return web.Response(status=302, headers={**headers, "Location": location})
        return await self._serve(request, f, headers)

    async def _lfs(self, request: web.Request) -> web.StreamResponse:
        if SIGNATURE not in request.query_string:
            return web.Response(status=403, text="bad signature")
        expires = request.query.get("Expires")
        if expires is not None and float(expires) < time.time():
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code><Message>Request has expired")
        if "Authorization" in request.headers:
            # A client that forwards the hub token to the CDN leaks it; fail loudly.
            return web.Response(status=400, text="authorization header sent to the CDN")
        sha256 = request.match_info["sha256"]
        for repo in self.repos.values():
            for files in repo.commits.values():
                for f in files.values():
                    if f.sha256 == sha256 and f.lfs:
                        return await self._serve(request, f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})
        return web.Response(status=404)

    async def _serve(self, request: web.Request, f: HubFile, headers: dict[str, str]) -> web.StreamResponse:
        if request.method == "GET":
            self.requests.append((request.method, f.path, request.headers.get("Range")))
            changes_at = self.faults.etag_changes_at.get(f.path)
            if (
                changes_at is not None
                and sum(1 for m, p, _ in self.requests if m == "GET" and p == f.path) >= changes_at
            ):
                headers = {**headers, "ETag": '"changed-at-the-source"'}
            errors = self.faults.errors.get(f.path)
            status, retry_after = errors.pop(0) if errors else (0, None)
            if status:
                extra = {"Retry-After": retry_after} if retry_after is not None else {}
                return web.Response(status=status, text="injected failure", headers=extra)
        start, end = 0, f.size - 1
        status = 200
        wanted = request.headers.get("Range")
        if wanted and not self.faults.ignore_range:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted.strip())
            if m is None or int(m[1]) >= max(f.size, 1):
                return web.Response(status=416, headers={"Content-Range": f"bytes */{f.size}"})
            start = int(m[1])
            end = min(int(m[2]), f.size - 1) if m[2] else f.size - 1
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
        length = end - start + 1 if f.size else 0
        encoding = self.faults.content_encoding.get(f.path)
        if encoding is not None and request.method == "GET":
            with open(f.disk, "rb") as src:
                src.seek(start)
                packed = gzip.compress(src.read(length))
            return web.Response(
                status=status,
                body=packed,
                headers={**headers, "Content-Encoding": encoding},
                content_type="application/octet-stream",
            )
        extra = self.faults.extra_length.get(f.path, 0) if request.method == "GET" else 0
        resp = web.StreamResponse(status=status, headers=headers)
        resp.content_length = length + extra
        resp.content_type = "application/octet-stream"
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        drops = self.faults.drop_after.get(f.path)
        drop_after = drops.pop(0) if drops else None
        stalls = self.faults.stall_after.get(f.path)
        stall_after = stalls.pop(0) if stalls else None
        flip = self.faults.flip_byte.get(f.path)
        block = 64 * 1024 if self.faults.slow_bps else _BLOCK
        sent = 0
        began = time.monotonic()
        trickle = self.faults.trickle.get(f.path)
        with open(f.disk, "rb") as src:
            src.seek(start)
            if trickle is not None:
                for byte in src.read(length):
                    if _peer_gone(request):
                        return resp
                    await resp.write(bytes([byte]))
                    await asyncio.sleep(trickle)
                await resp.write_eof()
                return resp
            while sent < length:
                data = src.read(min(block, length - sent))
                if flip is not None and start + sent <= flip < start + sent + len(data):
                    i = flip - start - sent
                    data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]
                if drop_after is not None and sent + len(data) >= drop_after:
                    await resp.write(data[: drop_after - sent])
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if stall_after is not None and sent + len(data) >= stall_after:
                    await resp.write(data[: stall_after - sent])
                    # Silent, connection open, until the client gives up (or the stall ends);
                    # aiohttp has no event for "the peer closed", so poll.
                    until = time.monotonic() + self.faults.stall_seconds
                    while time.monotonic() < until and not _peer_gone(request):  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                    return resp
                await resp.write(data)
                sent += len(data)
                if self.faults.slow_bps:
                    # Paced from the response's start: a cap on each connection, as CDNs apply.
                    ahead = began + sent / self.faults.slow_bps - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        if extra:
            # Every byte sent, more promised: silent until the client gives up (or the stall ends).
            until = time.monotonic() + self.faults.stall_seconds
            while time.monotonic() < until and not _peer_gone(request):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            return resp
        await resp.write_eof()
        return resp


def _peer_gone(request: web.Request) -> bool:
    return request.transport is None or request.transport.is_closing()


class HubServer:
    """Runs a :class:`LocalHub` on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, hub: LocalHub, port: int = 0) -> None:
        self.hub = hub
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="local-hub", daemon=True)
        self._runner: web.AppRunner | None = None
        #: Servers in front of the hub's sites (see tests.tlshub), closed with it.
        self._fronts: list[asyncio.Server] = []
        self.url = ""

    def start(self) -> str:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self.url

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.hub.app(), access_log=None)
        await self._runner.setup()
        self.url = await self._site("127.0.0.1", self._port)
        self.hub.base_url = self.url
        if not self.hub.cdn_url:
            self.hub.cdn_url = await self._site("127.0.0.2", 0)

    async def _site(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> str:
        assert self._runner is not None
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert server is not None
        bound = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"{'https' if ssl_context else 'http'}://{host}:{bound}"

    def stop(self) -> None:
        for front in self._fronts:
            self._loop.call_soon_threadsafe(front.close)
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)


DEMO_FILES: dict[str, bytes | int] = {
    "config.json": json.dumps({"architectures": ["TinyModel"], "hidden_size": 64, "num_layers": 2}).encode(),
    "tokenizer/tokenizer.json": json.dumps({"version": "1.0", "vocab": {"a": 0, "b": 1}}).encode(),
    "tokenizer/special_tokens_map.json": b'{"unk_token": "<unk>"}',
    "README.md": b"# tiny-model\n\nA generated model served by artifact-import's local hub.\n",
    "model.safetensors": 8 << 20,
    "weights/part-00001.bin": 2 << 20,
}


def small_files(count: int) -> dict[str, bytes | int]:
    """The ``--small-files`` of ``serve``: JSON files of varied small sizes under ``small/`` (more than a
    thousand: in folders of a thousand, ``small/007/file-007123.json``, as datasets shard them)."""
    if count > 1000:
        return {
            f"small/{i // 1000:03d}/file-{i:06d}.json": json.dumps({"index": i, "pad": "x" * (i * 37 % 4000)}).encode()
            for i in range(count)
        }
    return {
        f"small/file-{i:03d}.json": json.dumps({"index": i, "pad": "x" * (i * 37 % 4000)}).encode()
        for i in range(count)
    }


def parse_size(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([KMG]i?B?)?", text.strip(), re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError(f"bad size {text!r}")
    unit = (m[2] or "").upper()[:1]
    return int(m[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[unit]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hub", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve a generated repository until killed")
    serve.add_argument("--repo", default="demo/tiny-model")
    serve.add_argument("--data-dir", type=Path, default=None, help="where blobs are written (default: a temp dir)")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument("--demo", action="store_true", help="a small model with config, tokenizer and weights")
    serve.add_argument("--file", action="append", default=[], metavar="PATH=SIZE", help="a random file, e.g. w.bin=1G")
    serve.add_argument("--small-files", type=int, default=0, help="this many small JSON files under small/")
    serve.add_argument(
        "--rate", type=parse_size, default=0, help="cap each connection at this many bytes per second, e.g. 50M"
    )
    serve.add_argument(
        "--cdn-url",
        default="",
        help="redirect LFS files to this base URL (a server of DATA_DIR/blobs as /lfs/SHA256, e.g. nginx); "
        "default: the hub serves them itself on 127.0.0.2",
    )
    args = parser.parse_args(argv)

    import shutil
    import signal
    import tempfile

    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="local-hub-"))
    # SIGTERM (a script's `kill`) ends the server like Ctrl-C: its generated blobs are removed, not left in /tmp.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        _serve(args, data_dir)
    except KeyboardInterrupt:
        pass
    finally:
        if args.data_dir is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def _serve(args: argparse.Namespace, data_dir: Path) -> None:
    hub = LocalHub(data_dir)
    files: dict[str, bytes | int] = dict(DEMO_FILES) if args.demo else {}
    for spec in args.file:
        path, _, size = spec.partition("=")
        files[path] = parse_size(size)
    files.update(small_files(args.small_files))
    if not files:
        raise SystemExit("nothing to serve: give --demo, --file or --small-files")
    started = time.monotonic()
    hub.create_repo(args.repo, files)
    hub.faults.slow_bps = args.rate
    hub.cdn_url = args.cdn_url.rstrip("/")
    hub.cache_listings = True
    server = HubServer(hub, args.port)
    url = server.start()
    print(json.dumps({"url": url, "repo": args.repo, "generated_in": round(time.monotonic() - started, 2)}))
    sys.stdout.flush()
    # For a person at the terminal (stdout's one JSON line is for scripts): the command finds the hub by HF_ENDPOINT.
    print(
        f"serving {args.repo} at {url} until Ctrl-C; import it with:\n"
        f"  HF_ENDPOINT={url} .venv/bin/artifact-import import hf://{args.repo} --to ./{args.repo.split('/')[-1]}",
        file=sys.stderr,
        flush=True,
    )
    try:
        threading.Event().wait()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
