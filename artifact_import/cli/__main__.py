"""``python -m artifact_import.cli``: the same command as ``artifact-import``."""

from .command import main

main()
