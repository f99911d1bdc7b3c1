"""What a new user meets in the first hour: help texts, messages, the demo, what an interrupted import says."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from artifact_import.cli import main

COMMANDS = ([], ["import"], ["ls"], ["verify"], ["serve"])


@pytest.mark.parametrize("width", [40, 50, 60, 70, 80, 120])
def test_help_never_cuts_a_path_or_an_option_name_at_its_hyphen(width: int) -> None:
    """click rewraps help text at hyphens: ``DEST/.artifact-`` on one line, ``import/manifest.json`` on the next
    cannot be copied from the terminal."""
    for command in COMMANDS:
        shown = CliRunner().invoke(main, [*command, "--help"], terminal_width=width)
        assert shown.exit_code == 0, shown.output
        cut = [line for line in shown.output.splitlines() if re.search(r"\w-$", line)]
        assert cut == [], (command, width)
    shown = CliRunner().invoke(main, ["import", "--help"], terminal_width=width).output
    assert "DEST/.artifact-import/manifest.json" in shown
    assert "\u2011" not in shown, "what is shown is a plain hyphen"


def test_help_says_connections_are_for_the_whole_import_and_lists_every_exit_code() -> None:
    shown = CliRunner().invoke(main, ["import", "--help"], terminal_width=200).output
    connections = shown[shown.index("--connections") :].split("\n  --")[0]
    assert "one connection per file" not in connections
    assert "1: one connection for the whole import" in " ".join(connections.split())
    top = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    for code in ("0 ok", "1 import failed", "2 usage", "3 verification failed", "130 interrupted", "143", "129"):
        assert code in top
    assert "143 ended by SIGTERM" in top and "129 by SIGHUP" in top
