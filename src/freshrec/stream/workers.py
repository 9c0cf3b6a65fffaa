"""Joiner workers: partitions divided among processes, and a supervisor that restarts them.

A joiner over a subset of the source's partitions (``Joiner(..., partitions=...)``) is a
*worker*: it has its own state directory and checkpoints, and writes only its own partitions
of the output (which has one partition per source partition). Workers never share state, so
N workers write exactly what one joiner over every partition writes (per partition, in the
same order; see :mod:`freshrec.stream.join`). ``freshrec join --workers N`` starts N worker
processes on one machine under a :class:`Supervisor`; ``freshrec join --partitions a-b`` runs
one worker of many on any machine.

Examples
--------
>>> parse_partitions("0-2,5", 8)
(0, 1, 2, 5)
>>> split_partitions((0, 1, 2, 3, 4), 2)
[(0, 1, 2), (3, 4)]
>>> format_partitions((0, 1, 2, 5))
'0-2,5'
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from freshrec.errors import InputError

__all__ = ["parse_partitions", "split_partitions", "format_partitions", "Supervisor",
           "WorkerExit"]

logger = logging.getLogger(__name__)
_USAGE_ERROR = 2  # the CLI's exit code for a config or input error: restarting cannot help


def parse_partitions(spec: str, n: int) -> tuple[int, ...]:
    """``"0-3,6"`` -> ``(0, 1, 2, 3, 6)``, each in ``[0, n)``; :class:`InputError` otherwise."""
    out: set[int] = set()
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        try:
            a = int(lo)
            b = int(hi) if sep else a
        except ValueError:
            raise InputError(f"--partitions: {part.strip()!r} is not an int or a range a-b "
                             f"(in {spec!r})") from None
        if a > b:
            raise InputError(f"--partitions: {part.strip()!r} is an empty range (write the "
                             f"lower partition first: {b}-{a})")
        if not 0 <= a <= b < n:
            raise InputError(f"--partitions: {part.strip()!r} is outside the source's "
                             f"partitions 0-{n - 1}")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


def format_partitions(parts: Sequence[int]) -> str:
    """The inverse of :func:`parse_partitions`: runs of consecutive partitions as ``a-b``."""
    runs: list[list[int]] = []
    for p in sorted(parts):
        if runs and p == runs[-1][1] + 1:
            runs[-1][1] = p
        else:
            runs.append([p, p])
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


def split_partitions(parts: Sequence[int], workers: int) -> list[tuple[int, ...]]:
    """Divide ``parts`` into ``workers`` contiguous groups whose sizes differ by at most one."""
    if workers < 1 or workers > len(parts):
        raise InputError(f"--workers must be in [1, {len(parts)}] (one partition at least "
                         f"per worker), got {workers}")
    q, r = divmod(len(parts), workers)
    out, i = [], 0
    for w in range(workers):
        k = q + (w < r)
        out.append(tuple(parts[i:i + k]))
        i += k
    return out


@dataclass
class WorkerExit:
    """How one worker ended: its partitions, exit code, restarts and last stdout line."""

    partitions: tuple[int, ...]
    returncode: int
    restarts: int
    last_line: str = ""


@dataclass
class Supervisor:
    """Run one command per worker; restart a worker that dies (killed, or a crash) with
    exponential back-off, until it exits 0 or has been restarted ``max_restarts`` times. A
    worker that exits 2 (a config or input error, which a restart cannot fix) is not
    restarted.

    Parameters
    ----------
    commands
        ``{partitions: argv}``, one worker each.
    max_restarts
        Restarts allowed per worker before the supervisor gives up on it.
    backoff_s
        First back-off; doubles per consecutive failure, up to 30 s.
    """

    commands: dict[tuple[int, ...], list[str]]
    max_restarts: int = 100
    backoff_s: float = 0.5
    procs: dict[tuple[int, ...], subprocess.Popen[str]] = field(default_factory=dict)

    def run(self) -> list[WorkerExit]:
        """Start every worker and supervise until all have ended; returns how each ended."""
        restarts = dict.fromkeys(self.commands, 0)
        done: dict[tuple[int, ...], WorkerExit] = {}
        due: dict[tuple[int, ...], float] = dict.fromkeys(self.commands, 0.0)
        stop = False

        def on_term(signum: int, _frame: object) -> None:
            nonlocal stop
            stop = True
            for proc in self.procs.values():
                proc.send_signal(signum)

        old = signal.signal(signal.SIGTERM, on_term)
        try:
            while len(done) < len(self.commands):
                now = time.monotonic()
                for parts, when in list(due.items()):
                    if when <= now and not stop:
                        self.procs[parts] = subprocess.Popen(self.commands[parts],
                                                             stdout=subprocess.PIPE, text=True)
                        del due[parts]
                for parts, proc in list(self.procs.items()):
                    rc = proc.poll()
                    if rc is None:
                        continue
                    out = proc.stdout.read() if proc.stdout else ""
                    last = out.strip().splitlines()[-1] if out.strip() else ""
                    del self.procs[parts]
                    if (rc in (0, _USAGE_ERROR) or stop
                            or restarts[parts] >= self.max_restarts):
                        if rc != 0:
                            logger.error("join worker partitions=%s exited rc=%d; not "
                                         "restarted (restarts=%d)", format_partitions(parts),
                                         rc, restarts[parts])
                        done[parts] = WorkerExit(parts, rc, restarts[parts], last)
                        continue
                    restarts[parts] += 1
                    wait = min(self.backoff_s * 2 ** (restarts[parts] - 1), 30.0)
                    logger.warning("join worker partitions=%s died rc=%d; restart %d in %.1fs",
                                   format_partitions(parts), rc, restarts[parts], wait)
                    due[parts] = time.monotonic() + wait
                if stop and not self.procs:
                    for parts in list(due):
                        done[parts] = WorkerExit(parts, -signal.SIGTERM, restarts[parts])
                        del due[parts]
                time.sleep(0.05)
        finally:
            signal.signal(signal.SIGTERM, old)
            for proc in self.procs.values():
                proc.kill()
        return [done[p] for p in self.commands]
