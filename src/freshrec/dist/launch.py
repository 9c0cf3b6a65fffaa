"""Starting ranks: the process group of a ``torchrun`` worker, and ``--nproc N`` on one
machine.

``torchrun`` (``python -m torch.distributed.run``) starts the workers and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_ranks`
joins them into a process group with the ``dist`` section's backend and collective timeout.
:func:`launch_local` is what ``freshrec train --nproc N`` runs: torchrun on this machine,
every rank running ``python -m freshrec ARGS``.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore  # what torch.distributed re-exports

from freshrec.dist.config import DistConfig

__all__ = ["under_torchrun", "init_ranks", "launch_local", "backend_of"]

log = logging.getLogger(__name__)


def under_torchrun() -> bool:
    """Whether this process is a rank started by torchrun (``RANK`` and ``WORLD_SIZE`` set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def backend_of(config: DistConfig) -> str:
    """The process group backend: gloo for the host-memory tables, plus NCCL for CUDA
    tensors when asked (``nccl``) or available (``auto``).

    >>> backend_of(DistConfig(backend="gloo"))
    'gloo'
    """
    cuda = config.backend == "nccl" or (config.backend == "auto" and torch.cuda.is_available())
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_ranks(config: DistConfig) -> None:
    """Join the process group torchrun's environment describes (once per process).

    Every collective then fails after ``config.timeout_s`` instead of waiting for a rank
    that is gone.
    """
    if dist.is_initialized():
        return
    timeout = datetime.timedelta(seconds=config.timeout_s)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is not None and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # ranks restarted by torchrun meet in its store, which still holds the addresses the
        # ranks of the previous attempt published: each attempt takes keys of its own
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        store = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              is_master=False, timeout=timeout)
        dist.init_process_group(backend_of(config), timeout=timeout, rank=rank,
                                world_size=world,
                                store=PrefixStore(f"freshrec/attempt-{attempt}", store))
    else:
        dist.init_process_group(backend_of(config), timeout=timeout)
    log.info("rank=%d world=%d backend=%s", dist.get_rank(), dist.get_world_size(),
             dist.get_backend())


def launch_local(nproc: int, argv: Sequence[str], *, max_restarts: int = 0) -> int:
    """Run ``python -m freshrec ARGV`` on ``nproc`` ranks of this machine under torchrun;
    returns its exit status (non-zero when a rank failed).

    torchrun runs in a session of its own; SIGINT (Ctrl-C) and SIGTERM received here are
    passed to the ranks themselves, which stop at the same step, checkpoint and exit 0
    (:class:`freshrec.dist.run.StopSignal`), so that torchrun ends as after any successful
    run (given the signal itself, torchrun would end with an error whatever the ranks did).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
           "-m", "freshrec", *argv]
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.Popen(cmd, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        ranks = _children(proc.pid)
        log.warning("%s: passed to ranks %s", signal.Signals(signum).name, ranks)
        for pid in ranks or [proc.pid]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    main = threading.current_thread() is threading.main_thread()
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} \
        if main else {}
    try:
        return proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (torchrun's: the ranks), from ``/proc``."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                # stat: "pid (comm) state ppid ...", comm may hold spaces and parentheses
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return sorted(out)
