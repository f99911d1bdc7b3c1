"""A hostile hub: what it answers must not steer requests, and its listings must not collide (issue 16)."""

from __future__ import annotations

from pathlib import Path

import pytest

from artifact_import import IntegrityError, SourceError, UnsafePathError, import_artifact

from .conftest import fast_registry, repo_name, run_cli
from .hub import LocalHub


async def test_a_commit_id_that_is_not_one_never_reaches_a_url(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    hub.create_repo(repo, {"config.json": b"{}"})
    hub.faults.answered_sha = "../../../../etc/passwd?x="
    with pytest.raises(SourceError, match="answered a commit id that is not one"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
    assert hub.requests == [], "no file was requested"
    assert not (tmp_path / "m").exists()


async def test_a_file_served_from_another_commit_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    hub.create_repo(repo, {"config.json": b"{}", "README.md": b"# card\n"})
    hub.faults.served_commit = "0" * 40
    with pytest.raises(IntegrityError, match="served commit '0000000000000000000000000000000000000000'"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
    assert not (tmp_path / "m" / "config.json").exists()


async def test_unicode_twins_in_a_listing_are_refused_before_a_byte_moves(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    hub.create_repo(repo, {"caf\u00e9.json": b"{}", "cafe\u0301.json": b"[]"})
    with pytest.raises(UnsafePathError, match="collides"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
    assert hub.requests == []


# --- no secret in any message ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "secret"),
    [
        ("HF_ENDPOINT", "ftp://user:hf_PlantedSecret1@hub.example", "hf_PlantedSecret1"),
        ("HF_ENDPOINT", "https://user:hf_PlantedSecret2@hub.example", "hf_PlantedSecret2"),
        ("HF_ENDPOINT", "https://hub.example/?token=hf_PlantedSecret3", "hf_PlantedSecret3"),
    ],
)
@pytest.mark.parametrize("as_json", [False, True])
def test_a_hub_endpoint_with_credentials_is_refused_without_printing_them(
    tmp_path: Path, variable: str, value: str, secret: str, as_json: bool
) -> None:
    done = run_cli("import", "hf://org/name", "--to", str(tmp_path / "m"), *(["--json"] if as_json else []),
                   env={variable: value})  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "hub endpoint" in done.stderr
    assert secret not in done.stderr and secret not in done.stdout


@pytest.mark.parametrize(
    "value", ["ftp://AKIAPLANTED:aws-PlantedSecret@s3.example", "http://AKIAPLANTED:aws-PlantedSecret@s3.example"]
)
def test_an_s3_endpoint_with_credentials_is_refused_without_printing_them(tmp_path: Path, value: str) -> None:
    env = {"AWS_ENDPOINT_URL": value, "AWS_ACCESS_KEY_ID": "AKIAPLANTED", "AWS_SECRET_ACCESS_KEY": "aws-PlantedSecret"}
    for args in (["import", "s3://bucket/m", "--to", str(tmp_path / "m")], ["ls", "s3://bucket/m", "--json"]):
        done = run_cli(*args, env=env)
        assert done.returncode == 2, done.stderr
        assert "S3 endpoint" in done.stderr
        assert "aws-PlantedSecret" not in done.stderr + done.stdout


def test_log_lines_and_tracebacks_are_redacted() -> None:
    """-vv prints tracebacks; an exception quoting a signed redirect URL must not show the signature."""
    import io
    import logging

    from artifact_import.redact import RedactingFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingFormatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("test.redact")
    logger.addHandler(handler)
    try:
        try:
            raise ValueError("GET https://cdn.example/lfs/ab?Expires=9&Signature=PlantedSig&Key-Pair-Id=K failed")
        except ValueError:
            logger.error("fetching from https://user:PlantedPass@hub.example/x failed", exc_info=True)
    finally:
        logger.removeHandler(handler)
    out = stream.getvalue()
    assert "Traceback" in out and "ValueError" in out and "https://cdn.example/lfs/ab?" in out
    assert "PlantedSig" not in out and "PlantedPass" not in out


# --- hostile HTTP is the source's fault, not our crash -------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"redirect_to": "file:///etc/passwd"}, "redirected to a URL that is not http(s)"),
        ({"redirect_to": "self"}, "redirected too many times"),
        ({"garbage_response": True}, "config.json: "),
        ({"drop_after": {"config.json": [0] * 10}}, "config.json: download failed after 4 attempts"),
    ],
)
def test_hostile_http_is_a_source_error_naming_the_file(
    hub: LocalHub, tmp_path: Path, fault: dict[str, object], message: str
) -> None:
    repo = repo_name("hostile")
    hub.create_repo(repo, {"config.json": b'{"a": 1}'})
    for key, value in fault.items():
        setattr(hub.faults, key, value)
    done = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--retries", "4", timeout=60)
    assert done.returncode == 1, done.stderr
    assert message in done.stderr and "report it" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "m" / "config.json").exists()


# --- names as long as the filesystem allows ------------------------------------------------------------


async def test_a_file_name_as_long_as_the_filesystem_allows_is_imported(hub: LocalHub, tmp_path: Path) -> None:
    import os

    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    long_name = "w" * (limit - len(".safetensors") - 5) + "\u00e9\u00e9" + ".bin"  # multi-byte near the end
    assert len(long_name.encode()) <= limit
    repo = repo_name("hostile")
    hub.create_repo(repo, {long_name: b"\x00" * 1000, f"sub/{long_name}": b"\x01" * 10})
    await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
    assert (tmp_path / "m" / long_name).read_bytes() == b"\x00" * 1000
    assert (tmp_path / "m" / "sub" / long_name).read_bytes() == b"\x01" * 10
    assert not [p for p in (tmp_path / "m").rglob("*") if p.name.endswith(".artifact-import-part")]


def test_a_name_too_long_for_any_filesystem_is_refused_in_a_short_message(hub: LocalHub, tmp_path: Path) -> None:
    repo = repo_name("hostile")
    monster = "x" * 5000 + ".bin"
    hub.create_repo(repo, {monster: b"1", **{f"{i:02d}" + "y" * 300: b"2" for i in range(30)}, "ok.json": b"{}"})
    done = run_cli("import", f"hf://{repo}", "--to", str(tmp_path / "m"))
    assert done.returncode == 1, done.stderr
    line = done.stderr.strip()
    assert "has a name longer than 255 bytes" in line and "and 21 more" in line
    assert len(line) < 3000, len(line)
    assert hub.requests == [] and not (tmp_path / "m").exists()


async def test_an_import_the_filesystem_has_no_room_for_is_refused_before_a_byte_moves(
    hub: LocalHub, tmp_path: Path
) -> None:
    from artifact_import import InsufficientSpaceError

    repo = repo_name("hostile")
    hub.create_repo(repo, {"model.safetensors": 2000, "config.json": b"{}"})
    hub.faults.listed_size = {"model.safetensors": 1 << 50}  # "1 PiB": more than any test machine has free
    with pytest.raises(InsufficientSpaceError, match=r"needs 1024\.0 TiB but its filesystem has .* free"):
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
    assert hub.requests == []
    assert not (tmp_path / "m" / "config.json").exists()


def test_a_repository_of_more_files_than_open_descriptors_allowed_is_imported(hub: LocalHub, tmp_path: Path) -> None:
    """Files written wait for the commit closed: the number of files is bounded by the disk, not ``ulimit -n``."""
    import resource
    import subprocess
    import sys

    from .conftest import ROOT

    repo = repo_name("many")
    count = 700
    hub.create_repo(repo, {f"shards/{i:04d}.json": f'{{"i": {i}}}'.encode() for i in range(count)})

    def few_descriptors() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    import os

    done = subprocess.run(
        [sys.executable, "-m", "artifact_import.cli", "import", f"hf://{repo}", "--to", str(tmp_path / "m"), "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=300, preexec_fn=few_descriptors,
        env={k: v for k, v in os.environ.items() if k != "HF_TOKEN"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list((tmp_path / "m" / "shards").iterdir())) == count


# --- a neighbour flipping a folder of the destination into a link ----------------------------------------

ATTACKER = """
import os, sys, time
dest, outside, until = sys.argv[1], sys.argv[2], time.monotonic() + float(sys.argv[3])
d, real = os.path.join(dest, "d"), os.path.join(dest, "d.real")
while time.monotonic() < until:
    try:
        if os.path.isdir(d) and not os.path.islink(d):
            os.rename(d, real)
            os.symlink(outside, d)
            os.unlink(d)
            os.rename(real, d)
        elif not os.path.lexists(d):
            os.symlink(outside, d)
            os.unlink(d)
    except OSError:
        pass
"""


def test_a_folder_swapped_for_a_link_during_the_import_never_gets_a_byte_outside(hub: LocalHub, tmp_path: Path) -> None:
    """Someone with write access beside the destination flips DEST/d between a folder and a link to another
    folder while imports run: each import either lands inside DEST or fails, and nothing lands outside."""
    import asyncio
    import subprocess
    import sys

    from artifact_import import ArtifactImportError

    repo = repo_name("race")
    hub.create_repo(repo, {"d/payload.dat": 64 * 1024, "d/sub/more.dat": b"x" * 100, "top.json": b"{}"})
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    attempts = 40
    attacker = subprocess.Popen([sys.executable, "-c", ATTACKER, str(dest), str(outside), "120"])
    outcomes: list[str] = []
    try:
        for _ in range(attempts):
            try:
                asyncio.run(import_artifact(f"hf://{repo}", dest, registry=fast_registry(), skip_present=False))
                outcomes.append("imported")
            except ArtifactImportError as exc:
                outcomes.append(type(exc).__name__)
            assert [p for p in outside.rglob("*")] == [], f"written outside after {len(outcomes)} attempts"
    finally:
        attacker.kill()
        attacker.wait()
    assert len(outcomes) == attempts
    # Refused cleanly (the tree changed under the import), never an unexpected error.
    assert set(outcomes) <= {"imported", "UnsafePathError", "StorageError"}, sorted(set(outcomes))


async def test_a_listing_longer_than_the_bound_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    from artifact_import import HuggingFaceRegistry, RetryPolicy

    repo = repo_name("endless")
    hub.create_repo(repo, {f"f/{i:03d}.json": b"{}" for i in range(60)})
    registry = HuggingFaceRegistry(retry=RetryPolicy(max_attempts=1), max_files=50)
    try:
        with pytest.raises(SourceError, match="the listing has more than 50 entries"):
            await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
        assert hub.requests == []
        registry.max_files = 61  # 60 files and their folder
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
        assert len(list((tmp_path / "m" / "f").iterdir())) == 60
    finally:
        await registry.aclose()


async def test_the_listing_is_read_page_by_page_and_a_page_too_large_is_refused(hub: LocalHub, tmp_path: Path) -> None:
    from artifact_import import HuggingFaceRegistry, RetryPolicy

    repo = repo_name("paged")
    hub.create_repo(repo, {f"f/{i:03d}.json": b"{}" for i in range(40)})
    hub.tree_page_size = 7  # 41 entries: 6 pages, followed through their Link headers
    try:
        await import_artifact(f"hf://{repo}", tmp_path / "m", registry=fast_registry())
        assert len(list((tmp_path / "m" / "f").iterdir())) == 40
        hub.tree_page_size = 1000  # one page of ~41 entries, several KiB with the Hub's own scan in each
        registry = HuggingFaceRegistry(retry=RetryPolicy(max_attempts=1), max_listing_bytes=4096)
        try:
            with pytest.raises(SourceError, match=r"a page of the hub's file listing is larger than 4\.0 KiB"):
                await import_artifact(f"hf://{repo}", tmp_path / "n", registry=registry)
        finally:
            await registry.aclose()
        assert not (tmp_path / "n").exists()
    finally:
        hub.tree_page_size = 1000


async def test_a_listing_that_continues_on_another_host_is_refused_before_the_token_goes_there(
    hub: LocalHub, tmp_path: Path
) -> None:
    """The hub's next page link is followed with the hub's token: a link to another host would hand it over."""
    import asyncio

    from artifact_import import HuggingFaceRegistry, RetryPolicy

    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.close()

    elsewhere = await asyncio.start_server(record, "127.0.0.1", 0)
    port = elsewhere.sockets[0].getsockname()[1]
    repo = repo_name("paged")
    hub.create_repo(repo, {f"f/{i:03d}.json": b"{}" for i in range(20)}, token="hf_ListingSecret")
    hub.tree_page_size = 7
    hub.faults.tree_next_base = f"http://localhost:{port}"
    registry = HuggingFaceRegistry(token="hf_ListingSecret", retry=RetryPolicy(max_attempts=1))
    try:
        with pytest.raises(SourceError, match="listing continues on another host"):
            await import_artifact(f"hf://{repo}", tmp_path / "m", registry=registry)
    finally:
        await registry.aclose()
        hub.tree_page_size = 1000
        elsewhere.close()
        await elsewhere.wait_closed()
    assert seen == [], "nothing, the token least of all, went to the other host"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("verbosity", [[], ["-vv"], ["--json"]])
def test_secrets_planted_in_every_variable_appear_in_no_output(tmp_path: Path, verbosity: list[str]) -> None:
    """Failing imports from and to unreachable servers, with a secret in each variable that can hold one."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    secrets = {
        "HF_TOKEN": "hf_PlantedTokenSecret",
        "AWS_ACCESS_KEY_ID": "AKIAPLANTEDKEYID",
        "AWS_SECRET_ACCESS_KEY": "PlantedAwsSecretKey",
        "AWS_SESSION_TOKEN": "PlantedSessionToken",
    }
    env = {**secrets, "HF_ENDPOINT": f"http://127.0.0.1:{port}", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for args in (
        ["import", "hf://org/name", "--to", str(tmp_path / "a"), "--retries", "1"],
        ["import", "s3://bucket/models", "--to", str(tmp_path / "b")],
        ["import", "hf://org/name", "--to", "s3://bucket/models", "--retries", "1"],
        ["ls", "hf://org/name"],
    ):
        flags = [v for v in verbosity if v != "--json" or args[0] == "import"]
        done = run_cli(*args, *flags, env=env, timeout=120)
        assert done.returncode != 0, done.stdout
        shown = done.stdout + done.stderr
        for name, secret in secrets.items():
            assert secret not in shown, (name, args, shown[-2000:])
