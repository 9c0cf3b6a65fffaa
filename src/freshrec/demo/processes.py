"""The demo's child processes: ``freshrec`` commands started in their own process groups,
checked while they run, and always stopped.

A child runs ``python -P -c ...``: ``-P`` keeps the current directory off ``sys.path``, so a
folder in it named like a dependency (``yaml/``, ``torch/``) cannot replace that dependency in
the child.

Examples
--------
>>> import sys, tempfile
>>> from pathlib import Path
>>> out = Path(tempfile.mkdtemp()) / "version.log"
>>> child = ChildProcess("version", ["--version"], out)
>>> child.start()
>>> child.wait(60.0), child.proc.returncode, out.read_text().startswith("freshrec ")
(True, 0, True)
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from freshrec.errors import FreshrecError

__all__ = ["ChildProcess", "DemoError", "stop_all", "wait_for", "free_port"]

log = logging.getLogger(__name__)

#: A child runs ``freshrec <argv>`` with SIGINT as KeyboardInterrupt even when the demo was
#: started with SIGINT ignored (``nohup``, ``cmd &``): the demo stops children with SIGINT.
_CHILD_MAIN = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
               "from freshrec.cli import main; sys.exit(main(sys.argv[1:]))")


class DemoError(FreshrecError, RuntimeError):
    """The demo could not run: a child process died or a stage did not come up in time."""


class ChildProcess:
    """A ``freshrec`` command in its own process group, its output to a file.

    Parameters
    ----------
    name : str
        What the demo calls it (``serve``, ``join``, ``train``).
    argv : list of str
        The ``freshrec`` command line, without ``freshrec``.
    out : Path
        Where its stdout and stderr go.
    """

    def __init__(self, name: str, argv: list[str], out: Path) -> None:
        self.name, self.argv, self.out = name, argv, out
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        with open(self.out, "wb") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", "-c", _CHILD_MAIN, *self.argv], stdout=fh,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True)
        log.info("demo started child=%s pid=%d", self.name, self.proc.pid)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def check(self) -> None:
        """Raise :class:`DemoError` (with the tail of its output) if the child has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise DemoError(f"{self.name} exited with code {self.proc.returncode}; the end of "
                            f"its output ({self.out}):\n{self.tail()}")

    def tail(self, n: int = 15) -> str:
        """The last ``n`` lines of its output."""
        try:
            lines = self.out.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def signal(self, sig: int) -> None:
        """Send ``sig`` to its process group (nothing once it has exited)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def wait(self, timeout_s: float) -> bool:
        """Wait for the exit; ``True`` once it has exited."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(timeout_s, 0.0))
            return True
        except subprocess.TimeoutExpired:
            return False


def stop_all(children: list[ChildProcess], grace_s: float = 30.0) -> None:
    """SIGINT every child's group (they checkpoint, flush and exit), then SIGKILL stragglers."""
    for c in children:
        c.signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for c in children:
        if not c.wait(deadline - time.monotonic()):
            log.warning("demo: %s did not stop within %.0f s; killing it", c.name, grace_s)
    for c in children:
        if c.proc is not None:
            if c.proc.poll() is None:
                c.signal(signal.SIGKILL)
                c.wait(10.0)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(c.proc.pid, signal.SIGKILL)  # anything left in its group


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ready: Callable[[], bool], children: list[ChildProcess],
             timeout_s: float) -> None:
    """Poll ``ready`` until true; :class:`DemoError` when a child dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        for c in children:
            c.check()
        if time.monotonic() > deadline:
            raise DemoError(f"{what} did not happen within {timeout_s:.0f} s")
        time.sleep(0.2)
