"""The collectives of a distributed step, over one ``torch.distributed`` process group.

:class:`SparseExchange` moves ids, rows and row gradients between ranks with
``all_to_all_single`` (gloo supports it on CPU), gathers small per-rank values
(:meth:`SparseExchange.gather`) and counts the bytes each rank sends, so the cost of a step
can be measured (``freshrec bench dist``). With one rank every call is a local copy.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["SparseExchange"]

log = logging.getLogger(__name__)


class SparseExchange:
    """All-to-all and all-gather of numpy arrays between the ranks of ``group``.

    Parameters
    ----------
    group : ProcessGroup, optional
        A gloo group (the default group when None). Without an initialised process group
        the exchange has one rank.

    Examples
    --------
    >>> ex = SparseExchange()   # no process group: one rank
    >>> ex.rank, ex.world
    (0, 1)
    >>> ex.all_to_all(np.arange(3), np.array([3]), np.array([3])).tolist()
    [0, 1, 2]
    """

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self._on = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank(group) if self._on else 0
        self.world = dist.get_world_size(group) if self._on else 1
        #: Bytes this rank sent to other ranks (ids, rows, gradients, gathers).
        self.bytes_sent = 0
        #: Wall seconds this rank spent in the exchange's collectives (waits included).
        self.seconds = 0.0

    def all_to_all(self, send: np.ndarray, send_counts: np.ndarray,
                   recv_counts: np.ndarray) -> np.ndarray:
        """Rows ``send`` split by destination (``send_counts[r]`` rows to rank ``r``, in rank
        order); returns the rows received, ``recv_counts[r]`` from rank ``r``, in rank order.
        """
        send = np.ascontiguousarray(send)
        if self.world == 1:
            return send.copy()
        tail = send.shape[1:]
        out = np.empty((int(recv_counts.sum()), *tail), send.dtype)
        sc = [int(c) for c in send_counts]
        rc = [int(c) for c in recv_counts]
        per_row = int(np.prod(tail)) * send.dtype.itemsize
        self.bytes_sent += (sum(sc) - sc[self.rank]) * per_row
        if send.dtype == np.uint64:  # torch has no uint64 collectives: move the bits
            send, out_t = send.view(np.int64), out.view(np.int64)
        else:
            out_t = out
        start = time.perf_counter()
        dist.all_to_all_single(torch.from_numpy(out_t), torch.from_numpy(send),
                               output_split_sizes=rc, input_split_sizes=sc, group=self.group)
        self.seconds += time.perf_counter() - start
        return out

    def counts(self, send_counts: np.ndarray) -> np.ndarray:
        """Exchange count matrices: ``send_counts`` has shape (world, k) (``k`` counts for each
        destination); returns shape (world, k), row ``r`` being what rank ``r`` sent here."""
        k = send_counts.shape[1]
        ones = np.full(self.world, k, np.int64)
        flat = self.all_to_all(np.ascontiguousarray(send_counts, np.int64).reshape(-1), ones,
                               ones)
        return flat.reshape(self.world, k)

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Every rank's ``values`` (rows of equal width, any number per rank) concatenated in
        rank order, on every rank."""
        values = np.ascontiguousarray(values)
        if self.world == 1:
            return values.copy()
        start = time.perf_counter()
        n = torch.tensor([values.shape[0]], dtype=torch.int64)
        sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(self.world)]
        dist.all_gather(sizes, n, group=self.group)
        ns = [int(s) for s in sizes]
        most = max(ns)
        padded = np.zeros((most, *values.shape[1:]), values.dtype)
        padded[: values.shape[0]] = values
        parts = [torch.empty(padded.shape, dtype=torch.from_numpy(padded).dtype)
                 for _ in range(self.world)]
        dist.all_gather(parts, torch.from_numpy(padded), group=self.group)
        self.bytes_sent += padded.nbytes * (self.world - 1)
        self.seconds += time.perf_counter() - start
        return np.concatenate([p.numpy()[:k] for p, k in zip(parts, ns, strict=True)])

    def max(self, value: float) -> float:
        """The largest ``value`` over ranks."""
        return float(self.gather(np.array([value], np.float64)).max())

    def sum(self, value: float) -> float:
        """The sum of ``value`` over ranks, added in rank order (the same on every rank)."""
        return float(np.sum(self.gather(np.array([value], np.float64))))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is set on any rank (the same answer on every rank)."""
        return self.max(float(flag)) > 0 if self.world > 1 else flag

    def barrier(self) -> None:
        """Wait for every rank."""
        if self.world > 1:
            dist.barrier(group=self.group)
