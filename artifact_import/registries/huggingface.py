"""The Hugging Face Hub (or any server speaking its protocol) as a source."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils._headers import build_hf_headers

from .. import __version__
from ..errors import (
    AccessDeniedError,
    ArtifactImportError,
    ConfigError,
    DownloadError,
    SourceError,
)
from ..errors import (
    RepositoryNotFoundError as RepoMissing,
)
from ..errors import (
    RevisionNotFoundError as RevisionMissing,
)
from ..model import REPO_TYPES, ArtifactFile, ModelTarget, ResolvedArtifact
from ..paths import check_listing
from ..redact import safe_url
from ..streams import DEFAULT_CHUNK_SIZE, closing
from ..units import human_bytes
from .base import AbstractRegistry
from .http import RETRYABLE_STATUS, HttpTimeouts, RetryPolicy, parse_retry_after, stream_url
from .ranges import ConnectionBudget, ParallelPolicy, SameVersion, fetch
from .wire import WireClient

log = logging.getLogger(__name__)
T = TypeVar("T")

#: New signed CDN URLs one range asks for before a refusal is taken as final.
_MAX_RENEWALS = 3
#: The largest Hub repositories list a few hundred thousand entries.
DEFAULT_MAX_FILES = 1_000_000
DEFAULT_MAX_LISTING_BYTES = 64 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _offline(env: Mapping[str, str]) -> bool:
    """``HF_HUB_OFFLINE`` as ``huggingface_hub`` reads it."""
    return env.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


class HuggingFaceRegistry(AbstractRegistry):
    """Lists through ``huggingface_hub.HfApi`` and aiohttp; streams bodies with :mod:`.wire`.

    ``endpoint`` and ``token`` default to what ``huggingface_hub`` would use
    (``HF_ENDPOINT``, ``HF_TOKEN`` or the saved login), read when the registry
    is created rather than when ``huggingface_hub`` was imported.
    """

    def __init__(
        self,
        name: str = "huggingface",
        *,
        endpoint: str | None = None,
        token: str | None = None,
        retry: RetryPolicy | None = None,
        timeouts: HttpTimeouts | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_connections: int = 16,
        hub_scan: bool = True,
        parallel: ParallelPolicy | None = None,
        max_files: int = DEFAULT_MAX_FILES,
        max_listing_bytes: int = DEFAULT_MAX_LISTING_BYTES,
    ) -> None:
        self.name = name
        #: Bytes one page of the listing may have (the Hub's pages are about a megabyte).
        self.max_listing_bytes = max_listing_bytes
        #: Entries (files and folders) a listing may have: a hostile hub's endless listing is refused.
        self.max_files = max_files
        self.endpoint = _check_endpoint(endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
        self._token = token
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or HttpTimeouts.from_env(os.environ)
        self.chunk_size = chunk_size
        self.parallel = parallel or ParallelPolicy()
        # The connection budget bounds the downloads; a few more for listings running beside them.
        self._max_connections = max(max_connections, self.parallel.connections + 4)
        #: The connections this registry's downloads share; made anew by aclose (its semaphores belong to a loop).
        self.budget = ConnectionBudget(self.parallel)
        self._session: aiohttp.ClientSession | None = None
        self._wire: WireClient | None = None
        #: List with ``expand=true``, which adds the Hub's own per-file scan (and costs a slower listing).
        self.hub_scan = hub_scan

    def _api(self) -> HfApi:
        return HfApi(
            endpoint=self.endpoint,
            token=self._token,
            library_name="artifact-import",
            library_version=__version__,
        )

    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        if _offline(os.environ):
            raise ConfigError(
                f"{model.uri}: offline mode is on (HF_HUB_OFFLINE is set) and importing from the Hub needs "
                "the network: unset HF_HUB_OFFLINE to import"
            )
        api = self._api()
        where = model.uri
        info = await self._call(
            where, model, lambda: api.repo_info(model.repo_id, revision=model.revision, repo_type=model.repo_type)
        )
        commit = info.sha
        if not commit:
            raise SourceError(f"{where}: the hub did not say which commit the revision points to")
        if not _COMMIT.fullmatch(commit):
            # It goes into every file's URL: anything but a commit id could point them elsewhere.
            raise SourceError(f"{where}: the hub answered a commit id that is not one ({_clip(commit)!r})")

        files = tuple(await self._list_tree(where, model, commit))
        check_listing(f.path for f in files)
        log.info("%s resolved to commit %s: %d file(s) selected", where, commit, len(files))
        return ResolvedArtifact(
            source=model.source,
            repo_id=model.repo_id,
            revision=model.revision,
            commit=commit,
            files=files,
            repo_type=model.repo_type,
        )

    async def _list_tree(self, where: str, model: ModelTarget, commit: str) -> list[ArtifactFile]:
        """Every file of the repository at ``commit``, page by page (the Hub's ``Link: rel="next"``).

        Listed here rather than through ``HfApi.list_repo_tree``, which reads each page whole however large:
        a page above ``max_listing_bytes`` or a listing of more than ``max_files`` entries is refused, and
        each page becomes ArtifactFiles before the next is read.
        """
        kind = REPO_TYPES[model.repo_type].rstrip("/") or "models"
        url: str | None = f"{self.endpoint}/api/{kind}/{model.repo_id}/tree/{commit}"
        params: dict[str, str] | None = {"recursive": "true", "expand": "true" if self.hub_scan else "false"}
        headers = build_hf_headers(token=self._token, library_name="artifact-import", library_version=__version__)
        selected: list[ArtifactFile] = []
        count = 0
        while url is not None:
            page, url = await self._tree_page(where, url, params, headers)
            params = None  # the next link carries the query
            for entry in page:
                count += 1
                if count > self.max_files:
                    raise SourceError(
                        f"{where}: the listing has more than {self.max_files:,} entries; refusing it (raise "
                        "max_files if the repository really is that large)"
                    )
                if isinstance(entry, dict) and entry.get("type") == "file" and model.selects(str(entry["path"])):
                    selected.append(_artifact_file(entry))
        return selected

    async def _tree_page(
        self, where: str, url: str, params: dict[str, str] | None, headers: dict[str, str]
    ) -> tuple[list[Any], str | None]:
        """One page of the listing and the URL of the next, retrying what a retry can fix."""
        failures = 0
        while True:
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self.timeouts.listing):
                    async with self._client().get(url, params=params, headers=headers) as resp:
                        if resp.status == 200:
                            body = await _read_capped(resp.content, self.max_listing_bytes, where)
                            following = resp.links.get("next")
                            next_url = str(following["url"]) if following is not None else None
                            break
                        if resp.status in RETRYABLE_STATUS:
                            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                            reason = f"HTTP {resp.status}"
                        elif resp.status in (401, 403, 404):
                            raise RepoMissing(
                                f"{where}: the hub refused its file listing (HTTP {resp.status}"
                                f"{', ' + resp.headers['X-Error-Code'] if 'X-Error-Code' in resp.headers else ''}). "
                                "Check the name, or set HF_TOKEN to a token that can read it."
                            )
                        else:
                            raise SourceError(f"{where}: the hub answered HTTP {resp.status} while listing files")
            except TimeoutError:
                reason = f"no answer within {self.timeouts.listing:g}s"
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                reason = type(exc).__name__
            failures += 1
            if failures >= self.retry.max_attempts:
                raise SourceError(
                    f"{where}: cannot list files from {self.endpoint} ({reason}, {failures} attempts). "
                    "Check HF_ENDPOINT and the network, then try again."
                )
            await asyncio.sleep(self.retry.delay(failures, retry_after))
        try:
            page = json.loads(body)
        except ValueError:
            raise SourceError(f"{where}: the hub's file listing is not JSON") from None
        if not isinstance(page, list):
            raise SourceError(f"{where}: the hub's file listing is not a list of entries")
        return page, next_url

    async def _call(self, where: str, model: ModelTarget, fn: Callable[[], T]) -> T:
        """Run a synchronous ``HfApi`` call in a thread, retrying transient failures."""
        failures = 0
        while True:
            try:
                return await asyncio.wait_for(_in_own_thread(fn), self.timeouts.listing)
            except ArtifactImportError:
                raise  # said by fn itself
            except TimeoutError:
                reason = f"no answer within {self.timeouts.listing:g}s"
            except GatedRepoError:
                raise AccessDeniedError(
                    f"{where}: the repository is gated. Accept its conditions on the hub with your account, "
                    "then set HF_TOKEN to a token of that account."
                ) from None
            except RepositoryNotFoundError:
                raise RepoMissing(
                    f"{where}: repository not found on {self.endpoint}, or it is private and no token "
                    "with access was given. Check the name, or set HF_TOKEN."
                ) from None
            except RevisionNotFoundError:
                raise RevisionMissing(
                    f"{where}: revision {model.revision!r} not found. Use an existing branch, tag or commit id."
                ) from None
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                if status in (401, 403):
                    raise AccessDeniedError(
                        f"{where}: access denied (HTTP {status}). Set HF_TOKEN to a token that can read it."
                    ) from None
                if status not in RETRYABLE_STATUS:
                    raise SourceError(f"{where}: the hub answered HTTP {status} while listing files") from None
                reason = f"HTTP {status}"
            except (OSError, ConnectionError) as exc:
                reason = type(exc).__name__
            except Exception as exc:
                # httpx transport errors are not OSErrors; their text may quote URLs, so
                # only the class name is reported.
                name = type(exc).__name__
                if "Timeout" not in name and "Connect" not in name and "Network" not in name:
                    raise SourceError(f"{where}: listing files from {self.endpoint} failed ({name})") from None
                reason = name
            failures += 1
            if failures >= self.retry.max_attempts:
                raise SourceError(
                    f"{where}: cannot list files from {self.endpoint} ({reason}, {failures} attempts). "
                    "Check HF_ENDPOINT and the network, then try again."
                ) from None
            await asyncio.sleep(self.retry.delay(failures, None))

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeouts.client_timeout(),
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                auto_decompress=False,
                read_bufsize=self.chunk_size,
            )
        return self._session

    def _bodies(self) -> WireClient:
        """The client files' bytes come through (aiohttp lists; see :mod:`.wire` for why)."""
        if self._wire is None or self._wire.closed:
            self._wire = self.timeouts.wire_client(self.chunk_size)
        return self._wire

    def file_url(self, artifact: ResolvedArtifact, file: ArtifactFile) -> str:
        prefix = REPO_TYPES[artifact.repo_type]
        return f"{self.endpoint}/{prefix}{artifact.repo_id}/resolve/{artifact.commit}/{quote(file.path)}"

    def open(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        headers = build_hf_headers(token=self._token, library_name="artifact-import", library_version=__version__)
        # Bytes as stored: a Content-Encoding would break sizes, digests and Range offsets.
        headers["Accept-Encoding"] = "identity"
        url = self.file_url(artifact, file)
        same_version = SameVersion(file.path)
        budget = self.budget
        redirect: asyncio.Future[tuple[str, dict[str, str]]] | None = None

        async def target() -> tuple[str, dict[str, str]]:
            # The resolve URL redirects large files to a CDN: followed once, not once per range.
            nonlocal redirect
            if redirect is None:
                redirect = asyncio.ensure_future(self._follow_redirect(url, headers, file.path))
            return await asyncio.shield(redirect)

        def renew(stale: tuple[str, dict[str, str]]) -> None:
            # The first range refused with the stale URL asks for a new one; the others then share it.
            nonlocal redirect
            if redirect is not None and redirect.done() and redirect.result() is stale:
                redirect = None

        async def open_range(start: int, end: int | None) -> AsyncIterator[bytes]:
            received = 0
            renewed = 0
            while True:
                resolved = await target() if end is not None else None
                where, where_headers = resolved or (url, headers)
                chunks = stream_url(
                    self._bodies(),
                    where,
                    name=file.path,
                    source=f"{artifact.source}@{artifact.revision}",
                    denied_hint=(
                        "If it is gated, accept its conditions on the hub with your account; "
                        "then set HF_TOKEN to a token of an account that can read it."
                    ),
                    headers=where_headers,
                    expected_size=file.size,
                    retry=self.retry,
                    offset=start + received,
                    end=end,
                    same_version=same_version,
                    commit=artifact.commit,
                    trouble=budget.connections.trouble,
                )
                try:
                    async with closing(chunks):
                        async for chunk in chunks:
                            received += len(chunk)
                            yield chunk
                    return
                except AccessDeniedError:
                    # The CDN's signed URL expires (the Hub's after an hour): a long import asks the hub for
                    # a fresh one, where the plain resolve URL would have been redirected anew on every retry.
                    if resolved is None or where == url or renewed >= _MAX_RENEWALS:
                        raise
                    renewed += 1
                    log.info("%s: the CDN refused its signed URL; asking the hub for a new one", file.path)
                    renew(resolved)

        if file.size is None:
            return open_range(offset, None)
        return fetch(open_range, file.size, offset, budget, name=file.path)

    async def _follow_redirect(self, url: str, headers: dict[str, str], name: str) -> tuple[str, dict[str, str]]:
        """Where ``url`` redirects to, and the headers to send there (no token to another host)."""
        try:
            async with self._client().head(url, headers=headers, allow_redirects=False) as resp:
                location = resp.headers.get("Location") if resp.status in (301, 302, 303, 307, 308) else None
        except (TimeoutError, aiohttp.ClientError):
            return url, headers  # the ranges find out themselves, with their retries
        if not location:
            return url, headers
        final = urljoin(url, location)
        if urlsplit(final).scheme not in ("http", "https"):
            raise DownloadError(
                f"{name}: the hub redirected to a URL that is not http(s); the source is misbehaving", path=name
            )
        if urlsplit(final).netloc != urlsplit(url).netloc:
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return final, headers

    async def aclose(self) -> None:
        self.budget = ConnectionBudget(self.parallel)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._wire is not None:
            await self._wire.close()
            self._wire = None


def _in_own_thread(fn: Callable[[], T]) -> asyncio.Future[T]:
    """``fn`` in a daemon thread of its own: a call that never returns (a hub that accepts the connection and
    never answers) is abandoned at its deadline, and holds neither the loop's executor nor the exit."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="hub-listing", daemon=True).start()
    return future


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"hub endpoint {safe_url(endpoint)!r} is not an http(s) URL; check HF_ENDPOINT")
    if parts.username or parts.password or parts.query:
        # Such an endpoint would put a secret into every message that names it.
        raise ConfigError("hub endpoint must not carry credentials or a query; use HF_TOKEN for the token")
    return endpoint.rstrip("/")


def _artifact_file(entry: dict[str, Any]) -> ArtifactFile:
    """A file entry of the Hub's tree listing (``type``, ``path``, ``size``, ``oid``, ``lfs``, and with
    ``expand=true`` the Hub's own scan, ``securityFileStatus``)."""
    path = str(entry["path"])
    security = entry.get("securityFileStatus")
    scan = (
        {k: security.get(k) for k in ("status", "avScan", "pickleImportScan")} if isinstance(security, dict) else None
    )
    lfs = entry.get("lfs")
    if isinstance(lfs, dict):
        sha256 = str(lfs["oid"])
        return ArtifactFile(path, int(lfs["size"]), sha256=sha256, etag=sha256, security=scan)
    oid = entry.get("oid")
    return ArtifactFile(
        path, int(entry["size"]), git_sha1=str(oid) if oid else None, etag=str(oid) if oid else None, security=scan
    )


async def _read_capped(content: aiohttp.StreamReader, limit: int, where: str) -> bytes:
    """The whole body, refused once it passes ``limit`` bytes (a hostile hub's endless page)."""
    parts: list[bytes] = []
    held = 0
    async for piece, _ in content.iter_chunks():
        held += len(piece)
        if held > limit:
            raise SourceError(
                f"{where}: a page of the hub's file listing is larger than {human_bytes(limit)}; refusing it "
                "(raise max_listing_bytes if the hub really sends pages that large)"
            )
        parts.append(piece)
    return b"".join(parts)
