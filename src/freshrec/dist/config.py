"""Configuration of distributed training: the ``dist`` section of the config document.

Examples
--------
>>> DistConfig().nproc, DistConfig().backend
(1, 'auto')
>>> DistConfig(nproc=0)
Traceback (most recent call last):
...
freshrec.errors.ConfigError: DistConfig: nproc must be an int >= 1, got 0
"""

from __future__ import annotations

from dataclasses import dataclass

from freshrec._validate import is_int, is_number, require

__all__ = ["DistConfig"]


@dataclass(frozen=True, kw_only=True)
class DistConfig:
    """How a run is spread over ranks (``torchrun`` processes).

    Parameters
    ----------
    nproc : int
        Ranks that ``freshrec train --nproc N`` starts on this machine (``torchrun`` sets the
        world size itself; this is only the shorthand's default).
    backend : str
        ``gloo``, ``nccl`` or ``auto`` (NCCL when CUDA is present, else gloo). The sparse
        exchange always runs over gloo (the tables live in host memory); with ``nccl`` the
        dense all-reduce uses NCCL.
    sharding : str
        ``row_hash``: every table is sharded row-wise, a fid living on rank
        ``owner(fid) = (mix64(fid ^ salt) >> 32) mod world`` (:func:`freshrec.dist.owner_ranks`).
    exchange : str
        ``rows``: owners return the distinct rows a rank asked for, and the rank pools them
        (the only mode: each distinct fid crosses the wire once per step and rank).
    slicing : str
        Batch input: ``rows`` (every rank reads the input and encodes and trains on its
        disjoint slice of each global batch of ``train.batch_size`` rows, so N ranks train
        exactly as one process) or ``files`` (an input of several files, a directory or a
        glob: rank ``r`` reads only files ``r, r + N, ...`` of the sorted list, in local
        batches of ``train.batch_size // N`` rows; step ``k`` trains every rank's ``k``-th
        batch, and a rank whose files are done steps with empty batches until all are).
        Online training always slices the examples log by partition.
    max_restarts : int
        ``freshrec train --nproc N``: torchrun restarts every rank this many times after a
        rank fails; restarted ranks resume from the newest checkpoint.
    timeout_s : float
        Timeout of every collective: a rank that stops answering fails the job after this
        long instead of hanging it.
    """

    nproc: int = 1
    backend: str = "auto"
    sharding: str = "row_hash"
    exchange: str = "rows"
    slicing: str = "rows"
    max_restarts: int = 0
    timeout_s: float = 300.0

    def __post_init__(self) -> None:
        o = "DistConfig"
        require(is_int(self.nproc) and self.nproc >= 1, o, "nproc", "an int >= 1", self.nproc)
        require(self.backend in ("auto", "gloo", "nccl"), o, "backend",
                "'auto', 'gloo' or 'nccl'", self.backend)
        require(self.sharding == "row_hash", o, "sharding", "'row_hash'", self.sharding)
        require(self.exchange == "rows", o, "exchange", "'rows'", self.exchange)
        require(self.slicing in ("rows", "files"), o, "slicing", "'rows' or 'files'",
                self.slicing)
        require(is_int(self.max_restarts) and self.max_restarts >= 0, o, "max_restarts",
                "an int >= 0", self.max_restarts)
        require(is_number(self.timeout_s) and self.timeout_s > 0, o, "timeout_s",
                "a number > 0", self.timeout_s)
