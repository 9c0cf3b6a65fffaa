"""Helpers shared by the stream tests."""

from __future__ import annotations

import os
import signal
import subprocess


def kill_when(argv: list[str], stop_at: int) -> None:
    """Start ``argv`` (a joiner child that prints how many events it has read, one line per
    step) and SIGKILL it once that count reaches ``stop_at``."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if int(line) >= stop_at:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
