"""The ``artifact-import`` command."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import click

from .. import __version__
from ..errors import ArtifactImportError, ConfigError
from ..model import DEFAULT_CONCURRENT_FILES, FileState, ImportResult, ModelTarget, ProgressEvent
from ..redact import RedactingFormatter
from ..registries.ranges import ParallelPolicy
from ..units import human_bytes
from .common import (
    EXIT_INTERRUPTED,
    fail,
    log_level,
    policy_option,
    quiet_libraries,
    repo_type_option,
    unexpected,
    verbosity,
)
from .inspect import ls_cmd, verify_cmd
from .serve import serve_cmd

if TYPE_CHECKING:
    # Imported where they are used: a command pays only for what it runs (``--version`` for nothing).
    from ..config import Config
    from ..pipeline import ProgressCallback
    from ..registries.base import AbstractRegistry
    from ..storages.base import AbstractStorage
    from ..verifiers.base import Verifier

log = logging.getLogger("artifact_import")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="artifact-import")
@click.option("-v", "--verbose", count=True, help="More detail on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="No progress output; errors only.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    envvar="ARTIFACT_IMPORT_CONFIG",
    help="TOML file of named storages (storage:NAME), volumes (vfolder:VOLUME/...) and verifier settings. "
    "Also ARTIFACT_IMPORT_CONFIG.",
)
@click.pass_context
def main(ctx: click.Context, verbose: int, quiet: bool, config_path: str | None) -> None:
    """Import ML model artifacts into the storage where they will be used.

    Files are streamed from the source, verified against the digests the
    source publishes while they stream, and become visible at the
    destination only when every file of the import has passed.

    \b
    Exit codes: 0 ok, 1 import failed, 2 usage or config error,
    3 verification failed, 130 interrupted.
    """
    handler = logging.StreamHandler(sys.stderr)
    # -vv shows tracebacks: a redirect URL in one would carry its CDN signature.
    handler.setFormatter(RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=log_level(verbose), handlers=[handler])
    quiet_libraries(verbose)
    ctx.obj = {"verbose": verbose, "quiet": quiet, "config": config_path}


@main.command("import")
@click.argument("source", metavar="SOURCE")
@click.argument("files", nargs=-1, metavar="[FILE]...")
@verbosity
@click.option(
    "--to",
    "to",
    required=True,
    metavar="DEST",
    help="A directory (created if missing), s3://BUCKET[/PREFIX], storage:NAME[/PATH] from --config, "
    "or vfolder:VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH] (a vfolder of a --config volume; its quota applies).",
)
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@repo_type_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON result on stdout, nothing else.")
@click.option(
    "--concurrency",
    "--max-workers",
    "concurrency",
    default=DEFAULT_CONCURRENT_FILES,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Files transferred at once (--max-workers, as hf download calls it).",
)
@click.option(
    "--connections",
    default=ParallelPolicy().connections,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Connections shared by the files of the import: a large file is fetched as byte ranges over several "
    "at once (1: one connection per file).",
)
@click.option(
    "--retries",
    default=5,
    show_default=True,
    type=click.IntRange(1, 100),
    help="Attempts in a row per file before giving up (a resumed transfer that makes progress resets the count).",
)
@click.option(
    "--stall-timeout",
    default=None,
    type=click.FloatRange(0.1),
    help="Seconds without a byte before a transfer is dropped and resumed (default: HF_HUB_DOWNLOAD_TIMEOUT "
    "if set, else 30). HF_HUB_ETAG_TIMEOUT bounds each listing call (default 60).",
)
@click.option(
    "--clamd",
    metavar="ADDRESS",
    envvar="ARTIFACT_IMPORT_CLAMD",
    help="Scan every file with clamd at tcp://HOST:PORT or unix:///PATH (also ARTIFACT_IMPORT_CLAMD or the "
    "config's [verify.clamav]). If it cannot scan, the import fails.",
)
@click.option(
    "--quarantine",
    metavar="DEST",
    help="Keep files the malware scan flags here (a directory or storage:NAME[/PATH]), with a report. "
    "Also [verify.clamav] quarantine.",
)
@policy_option(
    "--pickle-policy",
    "Files holding a pickle (found by content, whatever their name: torch checkpoints, joblib, numpy "
    "object arrays, archives of them) that would import anything beyond tensors and state dicts, or that "
    "cannot be fully scanned: fail the import (default), warn and record, or do not scan.",
)
@policy_option(
    "--format-policy",
    "Keras models with Lambda layers or foreign modules, ONNX models whose external data leaves "
    "their folder, malformed GGUF headers or code-reaching chat templates: fail (default), warn, or do not check.",
)
@policy_option(
    "--hub-scan-policy",
    "Files the Hub's own scan flags (a virus, dangerous pickle imports): fail (default), warn, or do not "
    "ask the Hub for its scan.",
)
@click.option(
    "--lock-timeout",
    type=click.FloatRange(0),
    default=None,
    metavar="SECONDS",
    help="If another import into DEST is running, wait at most this long for it (default: until it ends).",
)
@click.option(
    "--no-resume",
    is_flag=True,
    help="If interrupted, discard the files already verified instead of keeping them (in "
    "DEST/.artifact-import/partial/) for the next run to finish.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Fetch every file again, even those an earlier import left at DEST (by default, files whose "
    "manifest entry and stored size match are skipped).",
)
@click.pass_context
def import_cmd(
    ctx: click.Context,
    source: str,
    files: tuple[str, ...],
    to: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    repo_type: str | None,
    as_json: bool,
    concurrency: int,
    connections: int,
    retries: int,
    stall_timeout: float | None,
    clamd: str | None,
    quarantine: str | None,
    pickle_policy: str | None,
    format_policy: str | None,
    hub_scan_policy: str | None,
    lock_timeout: float | None,
    no_resume: bool,
    force: bool,
) -> None:
    """Import SOURCE (or only the FILEs of it named) into DEST.

    \b
    SOURCE is one of:
      hf://ORG/NAME[@REV]    a Hugging Face Hub model (hf://NAME for the oldest,
                             e.g. hf://gpt2; HF_ENDPOINT, HF_TOKEN or the saved login)
      hf://datasets/ORG/NAME[@REV], hf://spaces/ORG/NAME[@REV]
                             a dataset or a Space (or --repo-type)
      s3://BUCKET[/PREFIX]   every object under a prefix (AWS_ENDPOINT_URL,
                             AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)
      storage:NAME[/PATH]    an object storage from --config

    FILE names a path in the source (as `hf download REPO FILE...`): only
    those are imported, and each must exist.

    Files land at DEST/<path in the source>, with a manifest at
    DEST/.artifact-import/manifest.json recording the source, the resolved
    commit and each file's size, sha256 and verdicts. Nothing appears at
    DEST until every file has been verified. Importing again into the same
    DEST fetches only what is missing or changed (--force: everything). If
    interrupted (Ctrl-C, the source failing), the files already verified are
    kept aside and the same command finishes the rest.

    \b
    Examples:
      artifact-import import hf://openai-community/gpt2 --to ./gpt2
      artifact-import import hf://gpt2 config.json model.safetensors --to ./gpt2
      artifact-import import hf://datasets/org/corpus@v2 --to /srv/data/corpus
      artifact-import import hf://org/model@v1.0 --to /srv/models/m \\
          --include '*.safetensors' --include '*.json'
      artifact-import import hf://org/model --to s3://models/hub/model --json
      artifact-import --config storage.toml import hf://org/model --to storage:models/org/model
      artifact-import import s3://datasets/llama --to ./llama
      artifact-import --config proxy.toml import hf://org/model \\
          --to vfolder:local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41/models
    """
    from ..progress import BarProgress, LineProgress
    from ..registries.http import HttpTimeouts, RetryPolicy

    quiet = ctx.obj["quiet"] or as_json
    progress: BarProgress | LineProgress | None = None
    if not quiet:
        progress = BarProgress() if sys.stderr.isatty() else LineProgress()
    parked = _Parked()
    signals: list[int] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.state is FileState.PARKED:
            parked.add(event)
        if progress is not None:
            progress(event)

    try:
        # Before huggingface_hub is imported: it reads these variables then, and fails on a malformed one.
        timeouts = HttpTimeouts.from_env(os.environ, read=stall_timeout)
        from ..config import VerifySettings, load_config
        from ..verifiers import build_verifiers
        from .locations import open_destination, open_source

        config = load_config(ctx.obj["config"]) if ctx.obj["config"] else None
        configured = config.verify if config is not None else VerifySettings()
        settings = attrs.evolve(
            configured,
            clamd=clamd or configured.clamd,
            pickle_policy=pickle_policy or configured.pickle_policy,
            format_policy=format_policy or configured.format_policy,
            hub_scan_policy=hub_scan_policy or configured.hub_scan_policy,
        )
        quarantine_to = quarantine or settings.quarantine
        if quarantine_to and not settings.clamd:
            raise ConfigError(
                "--quarantine keeps the files the malware scan flags, but no scan is configured: give --clamd "
                "ADDRESS (or ARTIFACT_IMPORT_CLAMD, or clamd in the config's [verify.clamav])"
            )
        # The destination first: a mistyped --to is reported before the source is contacted.
        storage = open_destination(to, config)
        kept = open_destination(quarantine_to, config) if quarantine_to else None
        model, registry = open_source(
            source,
            config,
            include=include,
            exclude=exclude,
            retry=RetryPolicy(max_attempts=retries),
            timeouts=timeouts,
            hub_scan=settings.hub_scan_policy != "off",
            parallel=ParallelPolicy(connections=connections),
            repo_type=repo_type,
            files=files,
        )
        verifiers = build_verifiers(settings)
        # What the libraries loaded so far allocated lives as long as the process: the collector need not walk
        # it again at every collection the import's chunks trigger (a few percent of an import's CPU).
        gc.freeze()
        result = asyncio.run(
            _run(
                model,
                storage,
                registry,
                verifiers,
                kept,
                config,
                on_progress,
                concurrency,
                skip_present=not force,
                keep_partial=not no_resume,
                lock_wait=lock_timeout,
                on_lock_wait=lambda: click.echo(
                    f"waiting for the import in progress into {to} to finish (it holds the destination's lock; "
                    "Ctrl-C to give up, --lock-timeout to bound the wait)",
                    err=True,
                ),
                signals=signals,
            )
        )
    except ArtifactImportError as exc:
        if progress is not None:
            progress.close()  # before the message, so no bar is redrawn under it
        hint = f"{parked.describe()} was kept aside: run the same command again to finish." if parked else None
        fail(exc, subject=source, as_json=as_json, verbose=ctx.obj["verbose"], hint=hint)
    except Exception as exc:
        if progress is not None:
            progress.close()
        fail(unexpected(exc), subject=source, as_json=as_json, verbose=0)
    except (KeyboardInterrupt, asyncio.CancelledError):
        if progress is not None:
            progress.close()  # before the message, so no bar is redrawn over it
        if parked:
            click.echo(
                "interrupted: the import was cancelled; nothing half-written is visible. "
                f"{parked.describe()} was kept aside: run the same command again to finish.",
                err=True,
            )
        else:
            click.echo("interrupted: the import was cancelled and nothing of it was left behind", err=True)
        sys.exit(128 + signals[0] if signals else EXIT_INTERRUPTED)
    finally:
        if progress is not None:
            progress.close()
    for line in _warnings(result):
        click.echo(line, err=True)
    if as_json:
        # The destination as the user gave it; the storage's own description is for logs.
        click.echo(json.dumps({**result.to_dict(), "destination": to}))
    elif not ctx.obj["quiet"]:
        click.echo(_summary(result, to))


class _Parked:
    """What an interrupted import kept aside, from its PARKED events: whole verified files and files
    received in part (``bytes_done`` short of ``bytes_total``)."""

    def __init__(self) -> None:
        self.verified: list[str] = []
        self.partial: list[str] = []

    def add(self, event: ProgressEvent) -> None:
        whole = event.bytes_total is None or event.bytes_done >= event.bytes_total
        (self.verified if whole else self.partial).append(event.path)

    def __bool__(self) -> bool:
        return bool(self.verified or self.partial)

    def describe(self) -> str:
        parts = []
        if self.verified:
            parts.append(f"{len(self.verified)} verified file(s)")
        if self.partial:
            parts.append(f"{len(self.partial)} file(s) received in part")
        return "What was already received (" + " and ".join(parts) + ")"


def _warnings(result: ImportResult) -> list[str]:
    """One line per finding a ``warn`` policy let through: imported, but the user must hear of it."""
    return [
        f"warning: {f.path}: {v.verifier}: {v.data['warning']}"
        for f in result.files
        for v in f.verdicts
        if v.data.get("warning")
    ]


async def _run(
    model: ModelTarget,
    storage: AbstractStorage,
    registry: AbstractRegistry,
    verifiers: list[Verifier],
    quarantine: AbstractStorage | None,
    config: Config | None,
    progress: ProgressCallback | None,
    concurrency: int,
    *,
    skip_present: bool,
    keep_partial: bool,
    lock_wait: float | None,
    on_lock_wait: Callable[[], None],
    signals: list[int],
) -> ImportResult:
    from ..api import import_artifact

    _handle_signals(signals, journaled=storage.journals_writes)
    try:
        return await import_artifact(
            model,
            storage,
            registry=registry,
            verifiers=verifiers,
            on_progress=progress,
            max_concurrent_files=concurrency,
            quarantine=quarantine,
            skip_present=skip_present,
            keep_partial=keep_partial,
            lock_wait=lock_wait,
            on_lock_wait=on_lock_wait,
        )
    finally:
        await registry.aclose()
        await storage.aclose()
        if quarantine is not None:
            await quarantine.aclose()
        if config is not None:
            await config.aclose()


def _handle_signals(received: list[int], *, journaled: bool) -> None:
    """Ctrl-C, SIGTERM (docker stop, Kubernetes, timeout) and SIGHUP all end the import the same way: the
    first cancels it (what was received is kept for the next run); a second ends the process at once."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None

    def on_signal(signum: int) -> None:
        received.append(signum)
        if len(received) == 1:
            task.cancel()
            return
        kept = (
            "what was received is in the destination's .artifact-import/partial/ folder, where the same command "
            "finds it and finishes the import"
            if journaled
            else "run the same command again to import what is missing"
        )
        os.write(2, f"\ninterrupted again: stopped at once; nothing half-written is visible; {kept}\n".encode())
        os._exit(128 + received[0])

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)


def _summary(result: ImportResult, to: str) -> str:
    source = f"{result.source}@{result.revision}" if result.revision else result.source
    if result.skipped == len(result.files):
        return (
            f"nothing to fetch: all {len(result.files)} file(s) of {source} (commit {result.commit[:12]}, "
            f"{human_bytes(result.total_bytes)}) already present in {to} and verified by the import that "
            "wrote them (their sizes match its manifest; --force fetches them again)"
        )
    # Throughput of what came over the network: skipped files and resumed starts re-read locally are not.
    rate = result.fetched_bytes / max(result.seconds, 1e-6)
    size_only = sum(1 for f in result.files if f.verdicts and "size checked only" in f.verdicts[0].detail)
    checked = (
        "every file matched its published digest"
        if not size_only
        else f"{len(result.files) - size_only} matched a published digest, {size_only} had none (size checked)"
    )
    scan = result.malware_scan()
    scanned = f"malware scan: {scan['engine']}, all clean" if scan["ran"] else "malware scan: not run (no --clamd)"
    skipped = f", {result.skipped} already present and skipped" if result.skipped else ""
    if result.resumed:
        skipped += f", {result.resumed} kept from an interrupted import"
    return (
        f"imported {len(result.files)} file(s), {human_bytes(result.total_bytes)}, from "
        f"{source} (commit {result.commit[:12]}) into {to} "
        f"in {result.seconds:.1f}s ({human_bytes(rate)}/s received){skipped}; {checked}; {scanned}"
    )


main.add_command(ls_cmd)
main.add_command(verify_cmd)
main.add_command(serve_cmd)
