"""The ``artifact-import`` command: ``main`` (import), ``ls``/``verify``, ``serve``, and how SOURCE and
--to are read."""

from .command import main

__all__ = ["main"]
