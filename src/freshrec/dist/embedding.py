"""Pooled embeddings over row-wise sharded tables: TorchRec's sparse data distribution.

A step of :class:`ShardedPooledEmbedding` on each rank::

    local batch ──dedupe──► distinct fids per table ──all-to-all──► owners
                                                                      │ resolve/admit
    pooled (B, F, D) ◄──embedding_bag── distinct rows ◄──all-to-all──┘ (rows)
       │ backward
       └──► d rows (summed per distinct fid) ──all-to-all──► owners: apply_gradients

Each rank owns the fids :func:`~freshrec.dist.owner_ranks` gives it, in an unchanged
:class:`~freshrec.table.EmbeddingTable` per table (its admission, expiry and optimizer as in
one process). A fid crosses the wire once per step and asking rank, its gradient once back;
the owner sums the gradients of all ranks and takes one optimizer step, so N ranks on the
slices of a batch update a row exactly as one process on the whole batch (up to the order
of floating-point sums). With admission counting (``min_count`` > 1), the owner is told how
many times each fid occurred, and counts them as one process would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from freshrec.dist.exchange import SparseExchange
from freshrec.dist.sharding import owner_ranks
from freshrec.errors import ConfigError
from freshrec.features.jagged import JaggedBatch
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from freshrec.table.table import EmbeddingTable

__all__ = ["ShardedPooledEmbedding"]


class _Group(NamedTuple):
    """One table group of a local batch: its distinct fids and how bags read them."""

    cols: list[int]
    unique: np.ndarray  # distinct fids (uint64)
    inverse: np.ndarray  # index into ``unique`` of every fid of the bags (int64)
    offsets: np.ndarray
    scale: np.ndarray


class _Routing(NamedTuple):
    """Where a step's distinct fids went and came from (kept for the backward)."""

    perm: np.ndarray  # send order of the distinct fids (all tables, table-major)
    sent: np.ndarray  # rows sent to each rank
    received: np.ndarray  # rows received from each rank
    ids: np.ndarray  # fids received, in receive order
    by_table: list[np.ndarray]  # positions in receive order of each table's fids


class _ShardedRows(torch.autograd.Function):
    """The distinct rows a rank needs, fetched from their owners; backward sends their
    gradients to the owners, which step their optimizers."""

    @staticmethod
    def forward(ctx: Any, anchor: torch.Tensor, module: ShardedPooledEmbedding,
                groups: list[_Group], now: int | None, train: bool) -> torch.Tensor:
        rows, routing = module._fetch(groups, now, train)
        ctx.module, ctx.routing = module, routing
        return torch.from_numpy(rows)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        ctx.module._push_gradients(ctx.routing, grad)
        return (None,) * 5


class ShardedPooledEmbedding(PooledEmbedding):
    """:class:`~freshrec.nn.PooledEmbedding` over this rank's shards of every table.

    Every rank must call it (forward, and backward when training) for every step, in the
    same order: each call is a collective over ``exchange``.

    Parameters
    ----------
    tables : Mapping[str, EmbeddingTable]
        This rank's shard of each table (fids :func:`owner_ranks` gives this rank).
    slots : Mapping[str, SlotSpec]
        Slot name -> table and pooling, in output order.
    exchange : SparseExchange
        The process group to exchange over.

    Examples
    --------
    One rank (no process group) gives what :class:`~freshrec.nn.PooledEmbedding` gives:

    >>> from freshrec.table import TableConfig, OptimizerConfig
    >>> cfg = TableConfig(name="item", dim=4, optimizer=OptimizerConfig(kind="sgd", lr=0.1))
    >>> slots = {"item_id": SlotSpec(table="item"), "hist": SlotSpec(table="item",
    ...                                                             pooling="mean")}
    >>> plain = PooledEmbedding({"item": EmbeddingTable(cfg)}, slots)
    >>> sharded = ShardedPooledEmbedding({"item": EmbeddingTable(cfg)}, slots, SparseExchange())
    >>> batch = JaggedBatch.from_dict({"item_id": [[1], [2]], "hist": [[2, 3, 2], []]})
    >>> a, b = plain(batch, now=5), sharded(batch, now=5)
    >>> bool(torch.allclose(a, b))
    True
    >>> (a * a).sum().backward(); (b * b).sum().backward()
    >>> bool(np.allclose(plain.tables["item"].lookup([2]), sharded.tables["item"].lookup([2])))
    True
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable], slots: Mapping[str, SlotSpec],
                 exchange: SparseExchange) -> None:
        super().__init__(tables, slots)
        self.exchange = exchange
        self._counted = [not self.tables[t].config.admission.admits_all for t, _, _ in self._plan]

    def forward(self, batch: JaggedBatch, now: int | None = None) -> torch.Tensor:
        """Pooled embeddings (batch, slots, dim) of this rank's batch; a collective."""
        if not self._same_dim:
            raise ConfigError("ShardedPooledEmbedding: every table must have the same dim")
        train = self._check(batch, now)
        groups = []
        for _, slots, slot_cols in self._plan:
            fids, offsets, scale = self._gather(batch, slots)
            unique, inverse = np.unique(fids, return_inverse=True)
            groups.append(_Group(slot_cols, unique, inverse.astype(np.int64, copy=False), offsets,
                                 scale))
        anchor = torch.empty(0, requires_grad=train)
        rows = _ShardedRows.apply(  # type: ignore[no-untyped-call]
            anchor, self, groups, now, train)
        b, first = batch.batch_size, 0
        out: dict[int, torch.Tensor] = {}
        for g in groups:
            weight = rows[first : first + g.unique.shape[0]]
            first += g.unique.shape[0]
            pooled = F.embedding_bag(torch.from_numpy(g.inverse), weight,
                                     torch.from_numpy(g.offsets), mode="sum",
                                     include_last_offset=True)
            pooled = pooled * torch.from_numpy(g.scale)[:, None]
            for i, c in enumerate(g.cols):
                out[c] = pooled[i * b : (i + 1) * b]
        return torch.stack([out[c] for c in range(len(self.slot_names))], dim=1)

    def forward_dict(self, batch: JaggedBatch, now: int | None = None) -> dict[str, torch.Tensor]:
        """Per-slot outputs of :meth:`forward` (sharded tables share one dim)."""
        out = self.forward(batch, now)
        return {slot: out[:, i] for i, slot in enumerate(self.slot_names)}

    def prefetch(self, batch: JaggedBatch, now: int) -> None:
        """Nothing: owners resolve a batch's fids inside the collective of its forward."""

    # ------------------------------------------------------------------ the exchange
    def _fetch(self, groups: list[_Group], now: int | None, train: bool
               ) -> tuple[np.ndarray, _Routing]:
        """Send each distinct fid to its owner, serve the fids other ranks sent here, and
        return the rows of this rank's distinct fids (table-major, as in ``groups``)."""
        ex, n_tab = self.exchange, len(groups)
        unique = np.concatenate([g.unique for g in groups])
        table_of = np.repeat(np.arange(n_tab), [g.unique.shape[0] for g in groups])
        key = owner_ranks(unique, ex.world) * n_tab + table_of
        perm = np.argsort(key, kind="stable")
        send_counts = np.bincount(key, minlength=ex.world * n_tab).reshape(ex.world, n_tab)
        recv_counts = ex.counts(send_counts)
        sent, received = send_counts.sum(1), recv_counts.sum(1)
        ids = ex.all_to_all(unique[perm], sent, received)
        occurrences = None
        if train and any(self._counted):
            counts = np.concatenate([np.bincount(g.inverse, minlength=g.unique.shape[0])
                                     for g in groups]).astype(np.int64)
            occurrences = ex.all_to_all(counts[perm], sent, received)
        starts = np.concatenate([[0], np.cumsum(recv_counts.reshape(-1))]).reshape(-1)
        by_table = [np.concatenate([np.arange(starts[r * n_tab + t], starts[r * n_tab + t + 1])
                                    for r in range(ex.world)]).astype(np.int64)
                    for t in range(n_tab)]
        reply = np.empty((ids.shape[0], self.dim), np.float32)

        def serve(t: int) -> None:
            table, at = self.tables[self._plan[t][0]], by_table[t]
            if occurrences is not None and self._counted[t]:
                # count every occurrence, as one process resolving the whole batch would
                reps = occurrences[at]
                values = table.lookup(np.repeat(ids[at], reps), now=now, train=True)
                reply[at] = values[np.cumsum(reps) - reps]
            else:
                reply[at] = table.lookup(ids[at], now=now, train=train)

        self._map(serve, list(range(n_tab)))
        back = ex.all_to_all(reply, received, sent)
        rows = np.empty_like(back)
        rows[perm] = back
        return rows, _Routing(perm, sent, received, ids, by_table)

    def _push_gradients(self, routing: _Routing, grad: torch.Tensor) -> None:
        """Send the gradient of each distinct row to its owner; owners step their rows."""
        g = np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)
        got = self.exchange.all_to_all(g[routing.perm], routing.sent, routing.received)

        def step(t: int) -> None:
            at = routing.by_table[t]
            if at.shape[0]:
                self.tables[self._plan[t][0]].apply_gradients(routing.ids[at], got[at])

        self._map(step, list(range(len(self._plan))))
