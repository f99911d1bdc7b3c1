"""The Hugging Face Hub (or any server speaking its protocol) as a source."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import platform
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import quote, urlencode, urljoin, urlsplit

import huggingface_hub
from huggingface_hub import constants
from multidict import CIMultiDictProxy

from .. import __version__
from ..errors import (
    AccessDeniedError,
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
from .http import RETRYABLE_STATUS, HttpTimeouts, RetryPolicy, parse_retry_after, same_origin, stream_url
from .hubtoken import hub_token
from .ranges import ConnectionBudget, ParallelPolicy, SameVersion, fetch
from .wire import BadResponse, TooLarge, WireClient, WireError

log = logging.getLogger(__name__)

#: New signed CDN URLs one range asks for before a refusal is taken as final.
_MAX_RENEWALS = 3
#: The largest Hub repositories list a few hundred thousand entries.
DEFAULT_MAX_FILES = 1_000_000
DEFAULT_MAX_LISTING_BYTES = 64 << 20
_COMMIT = re.compile(r"[0-9a-f]{40}")


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _switched_on(env: Mapping[str, str], name: str) -> bool:
    """A switch such as ``HF_HUB_OFFLINE``, as ``huggingface_hub`` reads it."""
    return env.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _hub_headers(token: str | None) -> dict[str, str]:
    """The user agent ``huggingface_hub`` would send (without its agent detection) and the token, if any."""
    agent = f"artifact-import/{__version__}; hf_hub/{huggingface_hub.__version__}; python/{platform.python_version()}"
    if origin := getattr(constants, "HF_HUB_USER_AGENT_ORIGIN", None):
        agent += f"; origin/{origin}"
    headers = {"user-agent": agent}
    if token is None and not _switched_on(os.environ, "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        token = hub_token()
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


class HuggingFaceRegistry(AbstractRegistry):
    """Speaks the Hub's HTTP API (revision, tree listing, resolve) with :mod:`.wire`.

    ``endpoint`` and ``token`` default to what ``huggingface_hub`` would use
    (``HF_ENDPOINT``, ``HF_TOKEN`` or the saved login, unless
    ``HF_HUB_DISABLE_IMPLICIT_TOKEN``), read when the registry is created
    rather than when ``huggingface_hub`` was imported. Its ``build_hf_headers``
    is not used: with telemetry on it fetches an "agent harnesses" registry
    from the endpoint on its first call, synchronously (up to 3 s on the event
    loop where the Hub is out of reach), and writes it into ``HF_HOME``. Its ``HfApi`` (and aiohttp) are not
    used: loading them took about 0.2 CPU-seconds, more than a tenth of what
    a 1 GiB import costs (``benchmarks/README.md``); the three calls an
    import makes are made here, and their errors said as ``huggingface_hub``
    would raise them.
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
        self._base_headers = _hub_headers(token)
        self.retry = retry or RetryPolicy()
        self.timeouts = timeouts or HttpTimeouts.from_env(os.environ)
        self.chunk_size = chunk_size
        self.parallel = parallel or ParallelPolicy()
        #: Kept for compatibility: the connections in use are bounded by ``parallel`` (downloads) and the
        #: calls an import makes one at a time (listings).
        self.max_connections = max_connections
        #: The connections this registry's downloads share; made anew by aclose (its semaphores belong to a loop).
        self.budget = self._new_budget()
        self._wire: WireClient | None = None
        #: List with ``expand=true``, which adds the Hub's own per-file scan (and costs a slower listing).
        self.hub_scan = hub_scan

    def _headers(self) -> dict[str, str]:
        return dict(self._base_headers)

    async def resolve(self, model: ModelTarget) -> ResolvedArtifact:
        if _switched_on(os.environ, "HF_HUB_OFFLINE"):
            raise ConfigError(
                f"{model.uri}: offline mode is on (HF_HUB_OFFLINE is set) and importing from the Hub needs "
                "the network: unset HF_HUB_OFFLINE to import"
            )
        where = model.uri
        commit = await self._commit_of(where, model)
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

    async def _commit_of(self, where: str, model: ModelTarget) -> str | None:
        """The commit ``model.revision`` points to (``HfApi.repo_info``'s call: ``/api/KIND/REPO/revision/REV``)."""
        kind = REPO_TYPES[model.repo_type].rstrip("/") or "models"
        url = f"{self.endpoint}/api/{kind}/{model.repo_id}/revision/{quote(model.revision, safe='')}"
        body, _ = await self._api_get(where, url, model, listing=False)
        try:
            info = json.loads(body)
        except ValueError:
            raise SourceError(f"{where}: the hub's answer about the revision is not JSON") from None
        sha = info.get("sha") if isinstance(info, dict) else None
        if sha is not None and not isinstance(sha, str):
            raise SourceError(f"{where}: the hub answered a commit id that is not one ({_clip(repr(sha))})")
        return sha

    async def _list_tree(self, where: str, model: ModelTarget, commit: str) -> list[ArtifactFile]:
        """Every file of the repository at ``commit``, page by page (the Hub's ``Link: rel="next"``).

        Listed here rather than through ``HfApi.list_repo_tree``, which reads each page whole however large:
        a page above ``max_listing_bytes`` or a listing of more than ``max_files`` entries is refused, and
        each page becomes ArtifactFiles before the next is read. A next page on another host than the hub's
        is refused: the token goes with every page.
        """
        kind = REPO_TYPES[model.repo_type].rstrip("/") or "models"
        query = urlencode({"recursive": "true", "expand": "true" if self.hub_scan else "false"})
        url: str | None = f"{self.endpoint}/api/{kind}/{model.repo_id}/tree/{commit}?{query}"
        selected: list[ArtifactFile] = []
        scans: dict[str, Mapping[str, Any]] = {}  # the Hub's scans, one object per distinct one
        count = 0
        while url is not None:
            body, headers = await self._api_get(where, url, model, listing=True)
            try:
                page = json.loads(body)
            except ValueError:
                raise SourceError(f"{where}: the hub's file listing is not JSON") from None
            if not isinstance(page, list):
                raise SourceError(f"{where}: the hub's file listing is not a list of entries")
            del body
            url = _next_page(headers.get("Link"), url)
            if url is not None and not same_origin(url, self.endpoint):
                raise SourceError(
                    f"{where}: the hub's listing continues on another host ({_clip(urlsplit(url).netloc)}); "
                    "refusing to send the token there"
                )
            for entry in page:
                count += 1
                if count > self.max_files:
                    raise SourceError(
                        f"{where}: the listing has more than {self.max_files:,} entries; refusing it (raise "
                        "max_files if the repository really is that large)"
                    )
                if isinstance(entry, dict) and entry.get("type") == "file" and model.selects(str(entry["path"])):
                    selected.append(_artifact_file(entry, scans))
        return selected

    async def _api_get(
        self, where: str, url: str, model: ModelTarget, *, listing: bool
    ) -> tuple[bytes, CIMultiDictProxy[str]]:
        """The body (at most ``max_listing_bytes``) and headers of a GET of the hub's API, retrying what a
        retry can fix, each attempt abandoned after the listing deadline (``HF_HUB_ETAG_TIMEOUT``)."""
        failures = 0
        while True:
            retry_after: float | None = None
            try:
                async with asyncio.timeout(self.timeouts.listing):
                    async with self._bodies().request("GET", url, self._headers()) as resp:
                        if resp.status == 200:
                            return await resp.read(self.max_listing_bytes), resp.headers
                        if resp.status in RETRYABLE_STATUS:
                            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                            reason = f"HTTP {resp.status}"
                        else:
                            raise self._refused(where, model, resp.status, resp.headers, listing=listing)
            except TimeoutError:
                reason = f"no answer within {self.timeouts.listing:g}s"
            except WireError as exc:
                reason = exc.describe()
            except TooLarge:
                limit = human_bytes(self.max_listing_bytes)
                raise SourceError(
                    f"{where}: a page of the hub's file listing is larger than {limit}; refusing it "
                    "(raise max_listing_bytes if the hub really sends pages that large)"
                ) from None
            except BadResponse as exc:
                raise SourceError(f"{where}: the hub's answer could not be used: {exc}") from None
            failures += 1
            if failures >= self.retry.max_attempts:
                raise SourceError(
                    f"{where}: cannot list files from {self.endpoint} ({reason}, {failures} attempts). "
                    "Check HF_ENDPOINT and the network, then try again."
                )
            await asyncio.sleep(self.retry.delay(failures, retry_after))

    def _refused(
        self, where: str, model: ModelTarget, status: int, headers: CIMultiDictProxy[str], *, listing: bool
    ) -> SourceError:
        """What an error answer means, as ``huggingface_hub`` reads it (``X-Error-Code``, then the status)."""
        code = headers.get("X-Error-Code", "")
        if listing:
            if status in (401, 403, 404):
                return RepoMissing(
                    f"{where}: the hub refused its file listing (HTTP {status}{', ' + code if code else ''}). "
                    "Check the name, or set HF_TOKEN to a token that can read it."
                )
            return SourceError(f"{where}: the hub answered HTTP {status} while listing files")
        if code == "GatedRepo":
            return AccessDeniedError(
                f"{where}: the repository is gated. Accept its conditions on the hub with your account, "
                "then set HF_TOKEN to a token of that account."
            )
        if code == "RevisionNotFound":
            return RevisionMissing(
                f"{where}: revision {model.revision!r} not found. Use an existing branch, tag or commit id."
            )
        invalid_token = headers.get("X-Error-Message", "") == "Invalid credentials in Authorization header"
        if code == "RepoNotFound" or (status == 401 and not invalid_token):
            return RepoMissing(
                f"{where}: repository not found on {self.endpoint}, or it is private and no token "
                "with access was given. Check the name, or set HF_TOKEN."
            )
        if status in (401, 403):
            return AccessDeniedError(
                f"{where}: access denied (HTTP {status}). Set HF_TOKEN to a token that can read it."
            )
        return SourceError(f"{where}: the hub answered HTTP {status} while listing files")

    def _bodies(self) -> WireClient:
        """The client every request goes through (see :mod:`.wire` for why not aiohttp)."""
        if self._wire is None or self._wire.closed:
            self._wire = self.timeouts.wire_client(self.chunk_size)
            self._wire.meter = self._meter
        return self._wire

    def _new_budget(self) -> ConnectionBudget:
        budget = ConnectionBudget(self.parallel)
        budget.metered = True  # every read is counted as it arrives (_meter)
        return budget

    def _meter(self, nbytes: int) -> None:
        self.budget.connections.received(nbytes)

    def file_url(self, artifact: ResolvedArtifact, file: ArtifactFile) -> str:
        prefix = REPO_TYPES[artifact.repo_type]
        return f"{self.endpoint}/{prefix}{artifact.repo_id}/resolve/{artifact.commit}/{quote(file.path)}"

    def open(self, artifact: ResolvedArtifact, file: ArtifactFile, offset: int = 0) -> AsyncIterator[bytes]:
        headers = self._headers()
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
                    timeouts=self.timeouts,
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
        """Where ``url`` redirects to, and the headers to send there: the token only to the hub's own origin
        (scheme, host and port: an https hub's token never goes over plain http, even to the same host)."""
        try:
            async with asyncio.timeout(self.timeouts.answer):
                async with self._bodies().request("HEAD", url, headers, redirects=False) as resp:
                    location = resp.headers.get("Location") if resp.status in (301, 302, 303, 307, 308) else None
        except (TimeoutError, WireError, BadResponse):
            return url, headers  # the ranges find out themselves, with their retries
        if not location:
            return url, headers
        final = urljoin(url, location)
        if urlsplit(final).scheme not in ("http", "https"):
            raise DownloadError(
                f"{name}: the hub redirected to a URL that is not http(s); the source is misbehaving", path=name
            )
        if not same_origin(final, self.endpoint):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        return final, headers

    async def aclose(self) -> None:
        self.budget = self._new_budget()
        if self._wire is not None:
            await self._wire.close()
            self._wire = None


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"hub endpoint {safe_url(endpoint)!r} is not an http(s) URL; check HF_ENDPOINT")
    if parts.username or parts.password or parts.query:
        # Such an endpoint would put a secret into every message that names it.
        raise ConfigError("hub endpoint must not carry credentials or a query; use HF_TOKEN for the token")
    return endpoint.rstrip("/")


def _artifact_file(entry: dict[str, Any], scans: dict[str, Mapping[str, Any]] | None = None) -> ArtifactFile:
    """A file entry of the Hub's tree listing (``type``, ``path``, ``size``, ``oid``, ``lfs``, and with
    ``expand=true`` the Hub's own scan, ``securityFileStatus``). ``scans``: the scans seen so far, so that
    files scanned alike share one (a listing of 200,000 files says "safe" 200,000 times)."""
    path = str(entry["path"])
    security = entry.get("securityFileStatus")
    scan: Mapping[str, Any] | None = (
        {k: security.get(k) for k in ("status", "avScan", "pickleImportScan")} if isinstance(security, dict) else None
    )
    if scan is not None and scans is not None:
        key = json.dumps(scan, sort_keys=True, default=str)
        scan = scans.setdefault(key, scan) if len(scans) < 4096 else scans.get(key, scan)
    lfs = entry.get("lfs")
    if isinstance(lfs, dict):
        sha256 = str(lfs["oid"])
        return ArtifactFile(path, int(lfs["size"]), sha256=sha256, etag=sha256, security=scan)
    oid = entry.get("oid")
    return ArtifactFile(
        path, int(entry["size"]), git_sha1=str(oid) if oid else None, etag=str(oid) if oid else None, security=scan
    )


_LINK = re.compile(r"<([^>]*)>([^<]*)")
_REL_NEXT = re.compile(r'(?i);\s*rel\s*=\s*"?(?:[^";,]*\s)?next(?:\s[^";,]*)?"?\s*(?:[;,]|$)')


def _next_page(link: str | None, base: str) -> str | None:
    """The ``rel="next"`` target of a ``Link`` header (the Hub pages its tree listing with one)."""
    for m in _LINK.finditer(link or ""):
        if _REL_NEXT.search(m[2]):
            return urljoin(base, str(m[1]).strip())
    return None

