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
from typing import TYPE_CHECKING, Any

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
    Context,
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
from .signature import signature_options, signature_settings

if TYPE_CHECKING:
    # Imported where they are used: a command pays only for what it runs (``--version`` for nothing).
    from ..config import Config
    from ..journal import ImportPlan
    from ..pipeline import ProgressCallback
    from ..progressbars import BarProgress
    from ..registries.base import AbstractRegistry
    from ..signing import SignatureSettings
    from ..storages.base import AbstractStorage
    from ..verifiers.base import Verifier
    from .locations import HubRepo

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
    3 verification failed (or the signature), 130 interrupted (Ctrl-C),
    143 ended by SIGTERM (docker stop, Kubernetes, timeout), 129 by SIGHUP.
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
    "vfolder:VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH] (a vfolder of a --config volume; its quota applies), "
    "or hf-cache:[DIR] (the Hugging Face cache: HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub; "
    "or the one at DIR).",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Say what the import would fetch, skip (already at DEST) or resume (kept by an interrupted import), "
    "with sizes and the total, and write nothing (as hf download --dry-run); with --json, as one JSON object.",
)
@click.option(
    "--hf-repo",
    metavar="REPO",
    help="With --to hf-cache: and a source that is not the Hub (s3://...): the Hub repository its files are, "
    "[hf://][datasets/|spaces/]ORG/NAME[@REVISION] (the ref REVISION, default main, then points at --hf-commit).",
)
@click.option(
    "--hf-commit",
    metavar="COMMIT",
    help="With --hf-repo: the commit id (40 hex digits) the files are, which names their snapshot in the cache.",
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
    help="Connections for the whole import, shared by all its files: a large file is fetched as byte ranges "
    "over several at once (1: one connection for the whole import, one file at a time, no ranges).",
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
    "--min-rate",
    default=None,
    type=click.FloatRange(0),
    metavar="BYTES_PER_S",
    help="A transfer averaging fewer bytes a second than this over 30 s is dropped and resumed; after --retries "
    "such drops the file fails, so a source that trickles cannot hold the import (default 1024; 0: no minimum).",
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
    "Files a loader would unpickle (by their name, a PROTO opcode or a container's structure: torch "
    "checkpoints, joblib, numpy object arrays, archives of them) that would import anything beyond tensors "
    "and state dicts, or that cannot be fully scanned: fail the import (default), warn and record, or do not scan.",
)
@policy_option(
    "--torchscript-policy",
    "TorchScript archives (torch.jit.save), whose code runs when torch.jit.load or torch.load loads them: "
    "fail the import (default), warn and record, or do not check.",
)
@policy_option(
    "--format-policy",
    "Keras models with Lambda layers, foreign modules or safe-mode bypasses, ONNX models whose external data "
    "leaves their folder, malformed GGUF headers or code-reaching chat templates, NeMo configs whose Hydra "
    "_target_ is not a model class: fail (default), warn, or do not check.",
)
@policy_option(
    "--hub-scan-policy",
    "Files the Hub's own scan flags (a virus, dangerous pickle imports): fail (default), warn, or do not "
    "ask the Hub for its scan.",
)
@signature_options
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
    min_rate: float | None,
    clamd: str | None,
    quarantine: str | None,
    pickle_policy: str | None,
    torchscript_policy: str | None,
    format_policy: str | None,
    hub_scan_policy: str | None,
    signature: dict[str, Any],
    lock_timeout: float | None,
    no_resume: bool,
    force: bool,
    dry_run: bool,
    hf_repo: str | None,
    hf_commit: str | None,
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
    kept aside and the same command finishes the rest. Into hf-cache: the
    files land as huggingface_hub lays them out (blobs, a snapshot of the
    commit appearing whole, refs/REV), found offline by transformers, vLLM
    and snapshot_download; a directory gets the metadata hf download
    --local-dir keeps, so that it takes the files for downloaded.
    --dry-run says what would be fetched, skipped or resumed, and does nothing.

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
      artifact-import import hf://org/model --to hf-cache:          # HF_HUB_CACHE / HF_HOME
      artifact-import import s3://mirror/org/model --to hf-cache: \\
          --hf-repo org/model@main --hf-commit 0123...cdef
      artifact-import import hf://org/model --to ./m --dry-run
      artifact-import --config proxy.toml import hf://org/model \\
          --to vfolder:local/user-1/8c8a3ff2c5d84a1c9e0f3b5d2a7e6c41/models
    """
    from ..progress import LineProgress
    from ..registries.http import HttpTimeouts, RetryPolicy

    quiet = ctx.obj["quiet"] or as_json or dry_run
    progress: BarProgress | LineProgress | None = None
    if not quiet:
        if sys.stderr.isatty():
            from ..progressbars import BarProgress  # tqdm: loaded only where bars are drawn

            progress = BarProgress()
        else:
            progress = LineProgress()
    parked = _Parked()
    signals: list[int] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.state is FileState.PARKED:
            parked.add(event)
        if progress is not None:
            progress(event)

    try:
        # Before huggingface_hub is imported: it reads these variables then, and fails on a malformed one.
        timeouts = HttpTimeouts.from_env(os.environ, read=stall_timeout, min_rate=min_rate)
        from ..config import VerifySettings, load_config
        from ..verifiers import build_verifiers
        from .locations import open_destination, open_source

        config = load_config(ctx.obj["config"]) if ctx.obj["config"] else None
        configured = config.verify if config is not None else VerifySettings()
        settings = attrs.evolve(
            configured,
            clamd=clamd or configured.clamd,
            clamd_unset=_clamd_unset(ctx) if clamd else configured.clamd_unset,
            pickle_policy=pickle_policy or configured.pickle_policy,
            torchscript_policy=torchscript_policy or configured.torchscript_policy,
            format_policy=format_policy or configured.format_policy,
            hub_scan_policy=hub_scan_policy or configured.hub_scan_policy,
        )
        signed = signature_settings(settings.signature, signature)
        quarantine_to = quarantine or settings.quarantine
        if quarantine_to and not settings.clamd:
            raise ConfigError(
                "--quarantine keeps the files the malware scan flags, but no scan is configured: give --clamd "
                "ADDRESS (or ARTIFACT_IMPORT_CLAMD, or clamd in the config's [verify.clamav])"
            )
        # The destination first: a mistyped --to is reported before the source is contacted.
        storage = open_destination(to, config, hub_repo=_hub_repo(source, to, hf_repo, hf_commit))
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
        if dry_run:
            plan = asyncio.run(_plan(model, storage, registry, verifiers, config, skip_present=not force))
            click.echo(json.dumps({**plan.to_dict(), "destination": to}) if as_json else _plan_text(plan, to))
            return
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
                signed,
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
                on_exit=progress.close if progress is not None else None,
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
        code = 128 + signals[0] if signals else EXIT_INTERRUPTED
        if as_json:
            # A script reading stdout learns what happened and what the next run will pick up.
            click.echo(json.dumps(_interrupted(source, to, signals, parked, code)))
        if parked:
            click.echo(
                "interrupted: the import was cancelled; nothing half-written is visible. "
                f"{parked.describe()} was kept aside: run the same command again to finish.",
                err=True,
            )
        else:
            click.echo("interrupted: the import was cancelled and nothing of it was left behind", err=True)
        sys.exit(code)
    finally:
        if progress is not None:
            progress.close()
    for line in _warnings(result):
        click.echo(line, err=True)
    if as_json:
        _echo_result_json(result, to)
    elif not ctx.obj["quiet"]:
        click.echo(_summary(result, to))


def _echo_result_json(result: ImportResult, to: str) -> None:
    """``--json`` of an import: the result, a file at a time (the whole document of 200,000 files at once
    doubled the import's peak memory)."""
    from ..journal.manifest import ResultLines

    # The destination as the user gave it; the storage's own description is for logs.
    head = json.dumps({**result.to_dict(files=False), "destination": to})
    line = ResultLines()
    click.echo(head[:-1] + ', "files": [', nl=False)
    for at in range(0, len(result.files), 1000):
        chunk = ", ".join(line(f) for f in result.files[at : at + 1000])
        click.echo((", " if at else "") + chunk, nl=False)
    click.echo("]}")


def _hub_repo(source: str, to: str, repo: str | None, commit: str | None) -> HubRepo | None:
    """What --hf-repo and --hf-commit say, checked against the source and destination they go with."""
    from .locations import HF_CACHE_PREFIX, HubRepo

    if repo is None and commit is None:
        return None
    if repo is None or commit is None:
        raise ConfigError("--hf-repo and --hf-commit go together: the repository and the commit its files are")
    if not to.startswith(HF_CACHE_PREFIX):
        raise ConfigError("--hf-repo and --hf-commit say where the Hugging Face cache files an import: --to hf-cache:")
    if source.startswith("hf://"):
        raise ConfigError(
            f"{source} says its repository and commit itself: --hf-repo and --hf-commit are for other sources (s3://)"
        )
    return HubRepo.parse(repo, commit)


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


def _clamd_unset(ctx: click.Context) -> str:
    """How to import without the malware scan, by where ``--clamd`` came from: the option or the variable."""
    if ctx.get_parameter_source("clamd") is click.core.ParameterSource.ENVIRONMENT:
        return "unset ARTIFACT_IMPORT_CLAMD (which gives the address) to import without a malware scan"
    return "import without --clamd"


def _interrupted(source: str, to: str, signals: list[int], parked: _Parked, code: int) -> dict[str, Any]:
    """``--json`` of an interrupted import: what ended it and what it kept aside for the next run."""
    return {
        "ok": False,
        "interrupted": True,
        "signal": signal.Signals(signals[0]).name if signals else "SIGINT",
        "exit_code": code,
        "source": source,
        "destination": to,
        # Verified whole, and received in part: the same command adopts the first and resumes the second.
        "kept": {"verified": sorted(parked.verified), "partial": sorted(parked.partial)},
        "message": "the import was cancelled; nothing half-written is visible"
        + ("; run the same command again to finish" if parked else ""),
    }


def _warnings(result: ImportResult) -> list[str]:
    """One line per finding a ``warn`` policy let through: imported, but the user must hear of it."""
    return [
        f"warning: {f.path}: {v.verifier}: {v.data['warning']}"
        for f in result.files
        for v in f.kept_verdicts
        if v.data.get("warning")
    ]


async def _run(
    model: ModelTarget,
    storage: AbstractStorage,
    registry: AbstractRegistry,
    verifiers: list[Verifier],
    quarantine: AbstractStorage | None,
    config: Config | None,
    signature: SignatureSettings,
    progress: ProgressCallback | None,
    concurrency: int,
    *,
    skip_present: bool,
    keep_partial: bool,
    lock_wait: float | None,
    on_lock_wait: Callable[[], None],
    signals: list[int],
    on_exit: Callable[[], None] | None = None,
) -> ImportResult:
    from ..api import import_artifact

    _handle_signals(signals, journaled=storage.journals_writes, on_exit=on_exit)
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
            signature=signature,
        )
    finally:
        await registry.aclose()
        await storage.aclose()
        if quarantine is not None:
            await quarantine.aclose()
        if config is not None:
            await config.aclose()


async def _plan(
    model: ModelTarget,
    storage: AbstractStorage,
    registry: AbstractRegistry,
    verifiers: list[Verifier],
    config: Config | None,
    *,
    skip_present: bool,
) -> ImportPlan:
    from ..context import ImportStepContext, StorageTarget
    from ..model import ArtifactStorageImportStep
    from ..pipeline import ImportPipeline
    from ..storages.base import StoragePool

    context = ImportStepContext(
        model=model,
        registry_name=registry.name,
        storage_pool=StoragePool(),
        storage_step_mappings={ArtifactStorageImportStep.ARCHIVE: StorageTarget(storage)},
    )
    try:
        return await ImportPipeline({registry.name: registry}, verifiers, skip_present=skip_present).plan(context)
    finally:
        await registry.aclose()
        await storage.aclose()
        if config is not None:
            await config.aclose()


#: What each action of a dry run means, after the file's path.
_PLANNED = {
    "fetch": "",
    "skip": "already there, verified when it was imported",
    "resume": "kept by an interrupted import",
    "verify": "held by the destination: verified there, not fetched",
}


def _plan_text(plan: ImportPlan, to: str) -> str:
    source = f"{plan.source}@{plan.revision}" if plan.revision else plan.source
    fetching = plan.fetching
    lines = [
        f"[dry-run] would fetch {len(fetching)} of {len(plan.files)} file(s), {human_bytes(plan.fetch_bytes)} of "
        f"{human_bytes(plan.total_bytes)}, from {source} (commit {plan.commit[:12]}) into {to}"
    ]
    if plan.completes_commit:
        lines.append("first, the commit an interrupted import started would be completed (its files were verified)")
    if plan.replaces:
        names = ", ".join(plan.replaces[:10]) + (
            f" and {len(plan.replaces) - 10} more" if len(plan.replaces) > 10 else ""
        )
        lines.append(f"would replace {len(plan.replaces)} existing file(s) no earlier import wrote: {names}")
    width = max((len(f.path) for f in plan.files), default=0)
    for f in sorted(plan.files, key=lambda f: f.path):
        size = human_bytes(f.fetch_bytes) if f.fetch_bytes or f.action == "fetch" else "-"
        note = _PLANNED[f.action.value]
        if f.action == "resume" and f.fetch_bytes:
            note = f"{human_bytes(f.kept_bytes)} received by an interrupted import; the rest is fetched"
        lines.append(f"  {f.action.value:<7} {size:>10}  {f.path:<{width}}  {note}".rstrip())
    lines.append("nothing was written (--dry-run)")
    return "\n".join(lines)


def _handle_signals(received: list[int], *, journaled: bool, on_exit: Callable[[], None] | None = None) -> None:
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
        if on_exit is not None:
            on_exit()  # the terminal as it was (the bars hide its echo of ^C)
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
    size_only = sum(1 for f in result.files if f.kept_verdicts and "size checked only" in f.kept_verdicts[0].detail)
    checked = (
        "every file matched its published digest"
        if not size_only
        else f"{len(result.files) - size_only} matched a published digest, {size_only} had none (size checked)"
    )
    scan = result.malware_scan()
    scanned = f"malware scan: {scan['engine']}, all clean" if scan["ran"] else "malware scan: not run (no --clamd)"
    scanned += _signed(result)
    skipped = f", {result.skipped} already present and skipped" if result.skipped else ""
    if result.resumed:
        skipped += f", {result.resumed} kept from an interrupted import"
    return (
        f"imported {len(result.files)} file(s), {human_bytes(result.total_bytes)}, from "
        f"{source} (commit {result.commit[:12]}) into {to} "
        f"in {result.seconds:.1f}s ({human_bytes(rate)}/s received){skipped}; {checked}; {scanned}"
        f"{_replaced(result)}"
    )


def _replaced(result: ImportResult, listed: int = 10) -> str:
    """The files of the destination no earlier import wrote that this one replaced (as ``hf download`` does)."""
    if not result.replaced:
        return ""
    names = ", ".join(result.replaced[:listed])
    more = f" and {len(result.replaced) - listed} more" if len(result.replaced) > listed else ""
    return f"; replaced {len(result.replaced)} existing file(s) no earlier import wrote: {names}{more}"


def _signed(result: ImportResult) -> str:
    """The summary's word on the model's signature, when one was looked for."""
    verdict = result.signature
    if verdict.status == "verified":
        return (
            f"; signature {verdict.file}: verified, by {verdict.signer}, {verdict.files_signed} file(s) match their "
            "signed sha256"
        )
    if verdict.status == "unsigned":
        return f"; signature: none in the source (--signature-policy {verdict.policy})"
    return ""


main.add_command(ls_cmd)
main.add_command(verify_cmd)
main.add_command(serve_cmd)
for _command in (main, *main.commands.values()):
    _command.context_class = Context
