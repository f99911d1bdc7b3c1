"""``artifact-import ls`` (what an import would fetch) and ``artifact-import verify`` (is a destination intact)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import TYPE_CHECKING

import click

from ..units import human_bytes
from .common import EXIT_VERIFY, guarded, repo_type_option, verbosity

if TYPE_CHECKING:
    from ..config import Config
    from ..journal import FsckReport
    from ..model import ResolvedArtifact


def _config(ctx: click.Context) -> Config | None:
    from ..config import load_config

    return load_config(ctx.obj["config"]) if ctx.obj["config"] else None


@click.command("ls")
@verbosity
@click.argument("source", metavar="SOURCE")
@click.option("--include", multiple=True, metavar="GLOB", help="Only files matching GLOB (repeatable).")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Skip files matching GLOB (repeatable).")
@repo_type_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def ls_cmd(
    ctx: click.Context,
    source: str,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    repo_type: str | None,
    as_json: bool,
) -> None:
    """List what importing SOURCE would fetch, without fetching it (a dry run).

    SOURCE and the filters are those of `import`. Prints each file's path and
    size, then the total and the commit the revision resolves to.

    \b
    Examples:
      artifact-import ls hf://openai-community/gpt2
      artifact-import ls hf://org/model@v1.0 --include '*.safetensors' --json | jq .total_bytes
    """

    async def listing() -> ResolvedArtifact:
        from ..registries.http import HttpTimeouts

        HttpTimeouts.from_env(os.environ)  # before huggingface_hub reads (and chokes on) a malformed one
        from .locations import open_source

        config = _config(ctx)
        model, registry = open_source(source, config, include=include, exclude=exclude, repo_type=repo_type)
        try:
            return await registry.resolve(model)
        finally:
            await registry.aclose()
            if config is not None:
                await config.aclose()

    artifact = guarded(lambda: asyncio.run(listing()), subject=source, as_json=as_json, verbose=ctx.obj["verbose"])
    if as_json:
        payload = {
            "source": artifact.source,
            "revision": artifact.revision,
            "commit": artifact.commit,
            "files": [{"path": f.path, "size": f.size, "sha256": f.sha256} for f in artifact.files],
            "file_count": len(artifact.files),
            "total_bytes": artifact.total_size,
        }
        click.echo(json.dumps(payload))
        return
    width = max((len(f.path) for f in artifact.files), default=0)
    for f in artifact.files:
        size = human_bytes(f.size) if f.size is not None else "?"
        click.echo(f"{f.path:<{width}}  {size:>10}")
    revision = f"@{artifact.revision}" if artifact.revision else ""
    click.echo(
        f"{len(artifact.files)} file(s), {human_bytes(artifact.total_size)} in {artifact.source}{revision} "
        f"(commit {artifact.commit[:12]})"
    )


@click.command("verify")
@verbosity
@click.argument("dest", metavar="DEST")
@click.option("--quick", is_flag=True, help="Compare sizes only; do not read the files back.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON report on stdout.")
@click.option("--concurrency", type=click.IntRange(1, 64), default=4, show_default=True, help="Files read at once.")
@click.pass_context
def verify_cmd(ctx: click.Context, dest: str, quick: bool, as_json: bool, concurrency: int) -> None:
    """Check that DEST still holds exactly what its manifest lists.

    Every file of DEST/.artifact-import/manifest.json is read back and its
    sha256 compared (--quick: sizes only); files missing, changed, or not in
    the manifest are listed. DEST is a directory, s3://BUCKET[/PREFIX],
    storage:NAME[/PATH] or vfolder:VOLUME/QUOTA_SCOPE/FOLDER_ID[/SUBPATH].

    \b
    Exit codes: 0 intact, 3 something is missing, changed or extra,
    1 DEST could not be read, 2 no manifest at DEST or a usage error.

    \b
    Examples:
      artifact-import verify ./gpt2
      artifact-import --config proxy.toml verify storage:models/org/model --json
    """

    from ..journal import Journal
    from .locations import open_destination

    async def check() -> FsckReport:
        config = _config(ctx)
        storage = open_destination(dest, config)
        try:
            return await Journal(storage).check(digests=not quick, concurrency=concurrency)
        finally:
            await storage.aclose()
            if config is not None:
                await config.aclose()

    report = guarded(lambda: asyncio.run(check()), subject=dest, as_json=as_json, verbose=ctx.obj["verbose"])
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        for path in report.missing:
            click.echo(f"missing: {path}")
        for path, why in report.changed:
            click.echo(f"changed: {path} ({why})")
        for path in report.extra:
            click.echo(f"extra:   {path} (not in the manifest)")
        _print_leftovers(report)
        how = "sha256 and size" if report.digests_checked else "size only"
        if report.intact:
            click.echo(
                f"intact: {report.checked} file(s), {human_bytes(report.total_bytes)}, match the manifest of "
                f"{report.source} (commit {report.commit[:12]}); checked {how}"
            )
        else:
            problems = len(report.missing) + len(report.changed) + len(report.extra)
            click.echo(
                f"NOT intact: {problems} problem(s) among {report.checked} file(s) of {report.source} "
                f"(commit {report.commit[:12]}); checked {how}.",
                err=True,
            )
            for hint in _repairs(report, dest):
                click.echo(hint, err=True)
    if not report.intact:
        sys.exit(EXIT_VERIFY)


def _repairs(report: FsckReport, dest: str) -> list[str]:
    """What will repair each kind of problem found, as commands to run."""
    # The commit the manifest names, so the repair fetches the same bytes whatever the branch says now.
    source = f"{report.source}@{report.commit}" if report.source.startswith("hf://") else report.source
    again = f"artifact-import import {source} --to {dest}"
    hints = []
    if report.missing:
        hints.append(f"to restore the {len(report.missing)} missing file(s) (only they are fetched): {again}")
    if report.changed:
        hints.append(
            f"to replace the {len(report.changed)} changed file(s): {again} --force (a plain import may keep a "
            "changed file whose size did not move)"
        )
    if report.extra:
        hints.append(
            f"the {len(report.extra)} extra file(s) were not written by the import: remove them if they do not "
            "belong (imports never delete what they did not write)"
        )
    return hints


def _print_leftovers(report: FsckReport) -> None:
    """What interrupted imports left: not the artifact, so not a reason to call it damaged."""
    if report.completed_commit:
        click.echo("completed: the commit an interrupted import had started (its files were verified)", err=True)
    for path in report.removed_leftovers:
        click.echo(f"removed: {path} (a part file a killed import left)", err=True)
    parked = report.parked
    if parked is not None:
        click.echo(
            f"parked: {len(parked.files)} verified file(s) and {len(parked.incomplete)} to resume, of "
            f"{parked.source} (commit {parked.commit[:12]}) wait in the reserved folder; importing that revision "
            "again finishes with them, importing another removes them",
            err=True,
        )
