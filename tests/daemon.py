"""A server process the tests start and end: politely (stop) or abruptly (kill, to test failures)."""

from __future__ import annotations

import subprocess


class Daemon:
    """Owns ``self.process`` (``None`` when the server is not ours to end)."""

    process: subprocess.Popen[bytes] | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:  # SeaweedFS can take longer than that to wind down
                self.kill()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
