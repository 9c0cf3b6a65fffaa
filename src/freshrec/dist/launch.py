"""Starting ranks: the process group of a ``torchrun`` worker, and ``--nproc N`` on one
machine.

``torchrun`` (``python -m torch.distributed.run``) starts the workers and sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; :func:`init_ranks`
joins them into a process group with the ``dist`` section's backend and collective timeout.
:func:`launch_local` is what ``freshrec train --nproc N`` runs: torchrun on this machine,
every rank running ``python -m freshrec ARGS``.
"""

from __future__ import annotations

import datetime
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

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
    returns its exit status (non-zero when a rank failed)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", f"--max-restarts={max_restarts}",
           "-m", "freshrec", *argv]
    log.info("launching %s", " ".join(cmd))
    return subprocess.call(cmd)
