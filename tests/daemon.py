"""A server process the tests start and end: politely (stop) or abruptly (kill, to test failures)."""

from __future__ import annotations

import subprocess


class Daemon:
    """Owns ``self.process`` (``None`` when the server is not ours to end)."""

    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
