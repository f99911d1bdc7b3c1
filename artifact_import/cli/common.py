"""What every ``artifact-import`` command shares: exit codes and how a failure is reported."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click

from ..errors import ArtifactImportError
from ..redact import redact_text

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_VERIFY = 3
EXIT_INTERRUPTED = 130

log = logging.getLogger("artifact_import")

T = TypeVar("T")


def fail(exc: ArtifactImportError, *, subject: str, as_json: bool, verbose: int, hint: str | None = None) -> NoReturn:
    """One line on stderr (two with a ``hint``; one JSON object on stdout with ``--json``), then the exit code."""
    if verbose >= 2:
        log.debug("failure detail", exc_info=exc)
    if as_json:
        payload: dict[str, Any] = {
            "ok": False,
            "source": subject,
            "error": {"type": type(exc).__name__, "message": redact_text(exc.message), "path": exc.path},
        }
        click.echo(json.dumps(payload))
    click.echo(f"error: {redact_text(exc.message)}", err=True)
    if hint:
        click.echo(hint, err=True)
    sys.exit(exc.exit_code)


def unexpected(exc: BaseException) -> ArtifactImportError:
    """A failure we do not know, as one line that asks for a report; the detail is logged for -vv."""
    log.debug("unexpected failure", exc_info=exc)
    return ArtifactImportError(f"unexpected {type(exc).__name__}; run with -vv for details and report it")


def guarded(fn: Callable[[], T], *, subject: str, as_json: bool, verbose: int) -> T:
    """Run ``fn``; a failure becomes :func:`fail`, Ctrl-C a one-line message and exit 130, never a traceback."""
    try:
        return fn()
    except ArtifactImportError as exc:
        fail(exc, subject=subject, as_json=as_json, verbose=verbose)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as exc:
        fail(unexpected(exc), subject=subject, as_json=as_json, verbose=0)


def log_level(verbose: int) -> int:
    return logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG


#: Libraries whose own log lines are noise next to ours: urllib3 (under minio) logs each retry with its URL,
#: httpx (under huggingface_hub) every request. Our messages say what failed and why; -vv shows theirs too.
_CHATTY = ("urllib3", "httpx", "httpx2", "httpcore", "httpcore2")


def quiet_libraries(verbose: int) -> None:
    for name in _CHATTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def _more_verbose(ctx: click.Context, _: click.Parameter, value: int) -> None:
    if value:
        ctx.obj["verbose"] += value
        logging.getLogger().setLevel(log_level(ctx.obj["verbose"]))
        quiet_libraries(ctx.obj["verbose"])


def _quieter(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.obj["quiet"] = True


def verbosity(command: Callable[..., T]) -> Callable[..., T]:
    """``-v`` / ``-q`` after the command name too (``artifact-import import -v ...``)."""
    command = click.option(
        "-q", "--quiet", is_flag=True, expose_value=False, callback=_quieter, help="No progress output; errors only."
    )(command)
    return click.option(
        "-v", "--verbose", count=True, expose_value=False, callback=_more_verbose, help="More detail (-vv for debug)."
    )(command)


def policy_option(flag: str, help: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """A ``--*-policy fail|warn|off`` option; unset (None) means the config file's value, else fail."""
    return click.option(flag, type=click.Choice(["fail", "warn", "off"]), default=None, help=help)


def repo_type_option(command: Callable[..., T]) -> Callable[..., T]:
    """``--repo-type``: what an ``hf://ORG/NAME`` without ``datasets/`` or ``spaces/`` names (as ``hf download``)."""
    return click.option(
        "--repo-type",
        type=click.Choice(["model", "dataset", "space"]),
        default=None,
        help="The kind of Hub repository SOURCE names (default: model; hf://datasets/... and hf://spaces/... "
        "say it themselves).",
    )(command)
