"""The CLI run on a pseudo-terminal, as a user at a shell runs it: what the screen receives, and keys pressed."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path


def run_in_terminal(
    args: list[str],
    cwd: Path,
    *,
    sized: bool = True,
    ctrl_c_after: bytes | None = None,
    timeout: float = 60,
) -> tuple[int, bytes]:
    """The exit code and every byte written to the terminal. ``sized``: the terminal reports 120x40, as a
    window does (else 0x0, as some CI runners' terminals do). ``ctrl_c_after``: the terminal is the
    process's controlling terminal, and once that text has been drawn three times the user presses Ctrl-C
    (the terminal sends SIGINT and, unless told not to, echoes ``^C``)."""
    leader, follower = pty.openpty()
    if sized:
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_HUB_OFFLINE")}
    controlling = ctrl_c_after is not None
    proc = subprocess.Popen(
        [sys.executable, "-m", "artifact_import.cli", *args],
        stdin=follower, stdout=follower, stderr=follower, cwd=cwd, start_new_session=controlling,
        preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if controlling else None,
        env={**env, "COLUMNS": "120", "LINES": "40", "TERM": "xterm"}, close_fds=True,
    )  # fmt: skip
    os.close(follower)
    out = bytearray()
    pressed = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            out += data
            if ctrl_c_after is not None and not pressed and out.count(ctrl_c_after) >= 3:
                os.write(leader, b"\x03")
                pressed = True
        elif proc.poll() is not None:
            break
    os.close(leader)
    return proc.wait(timeout=10), bytes(out)
