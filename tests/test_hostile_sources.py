"""Sources that would hold an import hostage, or take the token where it does not belong (issue 23).

Each behaviour is the local hub's (tests/hub.py ``Faults``), over real sockets; the TLS one is a real TLS
endpoint signed by a CA made for the test (tests/tlshub.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from artifact_import import DownloadError, HuggingFaceRegistry, RetryPolicy, SourceError, import_artifact
from artifact_import.registries.http import HttpTimeouts

from .conftest import files_under, repo_name, run_cli
from .hub import HubServer, LocalHub
from .tlshub import dual_port, make_ca

TOKEN = "hf_TestTokenThatMustStayHome0123"


def _registry(**timeouts: float) -> HuggingFaceRegistry:
    return HuggingFaceRegistry(
        retry=RetryPolicy(max_attempts=2, backoff_base=0.01, backoff_max=0.05),
        timeouts=HttpTimeouts(**{"read": 5.0, **timeouts}),
        token=TOKEN,
    )


def _gets(hub: LocalHub, path: str) -> list[str | None]:
    return [r for m, p, r in hub.requests if m == "GET" and p == path]


async def test_a_source_that_trickles_fails_in_bounded_time_while_a_slow_link_passes(
    hub: LocalHub, tmp_path: Path
) -> None:
    """One byte every 0.2 s never trips a stall timeout (bytes keep coming): the minimum rate (the default,
    1 KiB/s, over a 1 s window here) drops it, and after the allowed attempts the file fails. A link of
    100 KB/s is far above it and imports."""
    repo = repo_name("trickle")
    hub.create_repo(repo, {"trickled.json": b"{" + b" " * 2046 + b"}", "slow.bin": 200_000})
    hub.faults.trickle = {"trickled.json": 0.2}  # 2 KiB in 7 minutes
    registry = _registry(rate_window=1.0)
    try:
        with pytest.raises(DownloadError, match=r"trickled\.json: the source sent .* under the minimum rate"):
            # Bounded: 2 attempts of about a window each, not the 7 minutes the trickle would take.
            await asyncio.wait_for(
                import_artifact(f"hf://{repo}", tmp_path / "a", registry=registry, include=["trickled.json"]), 30
            )
        assert not (tmp_path / "a" / "trickled.json").exists()
        hub.faults.slow_bps = 100_000
        result = await import_artifact(f"hf://{repo}", tmp_path / "b", registry=registry, include=["slow.bin"])
        assert result.files[0].size == 200_000 and len(_gets(hub, "slow.bin")) == 1
    finally:
        await registry.aclose()


async def test_a_content_length_larger_than_the_body_ends_at_the_listed_size(hub: LocalHub, tmp_path: Path) -> None:
    """Every listed byte arrived and the answer promises more: the file is complete, nothing waits for the rest
    (before: the stall timeout, then a resume, on every attempt)."""
    repo = repo_name("overlong")
    hub.create_repo(repo, {"config.json": b'{"a": 1}', "model.safetensors": 64 * 1024})
    hub.faults.extra_length = {"config.json": 1000, "model.safetensors": 1}
    registry = _registry(read=60.0)  # not the stall timeout: the listed bytes end the body
    try:
        result = await asyncio.wait_for(import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry), 20)
    finally:
        await registry.aclose()
    assert len(result.files) == 2
    assert (tmp_path / "m" / "config.json").read_bytes() == b'{"a": 1}'
    assert _gets(hub, "config.json") == [None] and _gets(hub, "model.safetensors") == [None], hub.requests


async def test_an_encoded_body_is_refused_at_once(hub: LocalHub, tmp_path: Path) -> None:
    """``Content-Encoding: gzip`` despite ``Accept-Encoding: identity``: its bytes are not the file's. Refused on
    the first answer, not resumed with Range until the digest fails."""
    repo = repo_name("encoded")
    hub.create_repo(repo, {"config.json": b'{"hidden_size": 64}' + b" " * 3000, "README.md": b"# card\n"})
    hub.faults.content_encoding = {"config.json": "gzip"}
    registry = _registry()
    try:
        with pytest.raises(DownloadError, match=r"config\.json: the source sent the file encoded \(Content-Encoding: "
                           r"gzip\)"):  # fmt: skip
            await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
    finally:
        await registry.aclose()
    assert len(_gets(hub, "config.json")) == 1
    assert not (tmp_path / "m" / "config.json").exists()


async def test_a_next_page_on_another_origin_is_refused_and_never_gets_the_token(
    hub: LocalHub, hub_server: HubServer, tmp_path: Path
) -> None:
    repo = repo_name("leaky")
    hub.create_repo(repo, {f"f/{i}.json": b"{}" for i in range(8)}, token=TOKEN)
    hub.tree_page_size = 3
    other = hub.cdn_url  # another origin serving the same hub, as a third party could
    hub.faults.next_link_origin = other
    hub.authorized.clear()
    registry = _registry()
    try:
        with pytest.raises(SourceError, match="listing continues on another host"):
            await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
    finally:
        hub.tree_page_size = 1000
        await registry.aclose()
    other_host = other.split("://", 1)[1]
    assert hub.authorized, "the token went to the hub"
    assert [a for a in hub.authorized if a[1] == other_host] == [], "no token to the other origin"
    assert hub.requests == []


def test_an_https_hub_redirecting_to_plain_http_on_the_same_host_and_port_never_sends_the_token(
    hub: LocalHub, hub_server: HubServer, tmp_path: Path
) -> None:
    """A real TLS endpoint (a CA made for the test) whose large files redirect to ``http://`` on the same host and
    port: the bytes may come that way (their sha256 is checked), the token may not. The large file is fetched as
    ranges after one redirect lookup of ours; the small one through the HTTP client's own redirects."""
    ca_file, context = make_ca(tmp_path / "ca")
    https_url, http_url = dual_port(hub_server, context)
    repo = repo_name("downgrade")
    hub.create_repo(repo, {"big.bin": 33 << 20, "small.bin": 1 << 20, "config.json": b"{}"}, token=TOKEN)
    cdn = hub.cdn_url
    hub.cdn_url = http_url  # LFS files redirect from https://127.0.0.1:P to http://127.0.0.1:P
    hub.authorized.clear()
    try:
        done = run_cli(
            "import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--retries", "2",
            env={"HF_ENDPOINT": https_url, "HF_TOKEN": TOKEN, "SSL_CERT_FILE": str(ca_file)}, timeout=180,
        )  # fmt: skip
    finally:
        hub.cdn_url = cdn
    plain = [a for a in hub.authorized if a[0] != "https"]
    assert plain == [], f"the token went over plain http: {plain[:5]}"
    assert done.returncode == 0, done.stderr[-3000:]
    assert any(a[0] == "https" for a in hub.authorized), "the token went to the hub, over TLS"
    got = files_under(tmp_path / "m")
    assert len(got["big.bin"]) == 33 << 20 and len(got["small.bin"]) == 1 << 20
    ranges = [r for r in _gets(hub, "big.bin") if r is not None]
    assert len(ranges) > 1, "the large file came as ranges"
