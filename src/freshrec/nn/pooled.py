"""``PooledEmbedding``: pooled multi-slot lookups over embedding tables, optimizer fused in backward.

Forward resolves the fids of every slot to table rows (admitting new fids while training),
pools each bag (sum or mean) in a numba kernel and returns dense tensors that autograd flows
through. Backward does not build an embedding gradient tensor: it routes each bag's gradient
to its rows, sums duplicates and takes one optimizer step per row inside the table, as
TorchRec's fused embedding bags do. A training step is therefore
``loss.backward(); dense_opt.step()``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from freshrec.errors import ConfigError, InputError
from freshrec.features.jagged import JaggedBatch
from freshrec.table.table import EmbeddingTable

__all__ = ["PooledEmbedding", "SlotSpec"]


@dataclass(frozen=True, kw_only=True)
class SlotSpec:
    """How one slot is embedded: which table, and ``sum`` or ``mean`` pooling."""

    table: str
    pooling: str = "sum"

    def __post_init__(self) -> None:
        if self.pooling not in ("sum", "mean"):
            raise ConfigError(f"SlotSpec: pooling must be 'sum' or 'mean', got {self.pooling!r}")


class _TablePool(torch.autograd.Function):
    """Pool bags of one table; backward hands row gradients to the table's optimizer."""

    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, table: EmbeddingTable, rows: np.ndarray,
        offsets: np.ndarray, scale: np.ndarray, fids: np.ndarray, epoch: int,
        unique: tuple[np.ndarray, np.ndarray] | None,
    ) -> torch.Tensor:
        ctx.table, ctx.rows, ctx.offsets, ctx.scale = table, rows, offsets, scale
        ctx.fids, ctx.epoch, ctx.unique = fids, epoch, unique
        return torch.from_numpy(table.pool(rows, offsets, scale))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        table: EmbeddingTable = ctx.table
        rows, unique = ctx.rows, ctx.unique
        if table.epoch != ctx.epoch:  # rows were removed since forward: re-resolve
            rows, unique = table.find(ctx.fids), None
        g = np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)
        table.apply_bag_gradients(rows, ctx.offsets, ctx.scale, g, unique)
        return (None,) * 8


class _Resolved(NamedTuple):
    """One table group of a batch resolved to rows (valid while ``table.epoch == epoch``)."""

    table: EmbeddingTable
    cols: list[int]
    rows: np.ndarray
    offsets: np.ndarray
    scale: np.ndarray
    fids: np.ndarray
    epoch: int
    unique: tuple[np.ndarray, np.ndarray] | None  # EmbeddingTable.unique_rows(rows), if done


class _AllTablesPool(torch.autograd.Function):
    """Pool every table group into one (B, F, D) tensor; backward steps every table.

    The per-table work (resolve + pool forward, gradient routing + optimizer step backward)
    runs on ``module``'s worker threads, one table per task; the numba kernels release the
    GIL, and each table has its own locks, so tables proceed in parallel. Groups found in
    ``prefetched`` (table name -> :class:`_Resolved`) are only pooled.
    """

    @staticmethod
    def forward(
        ctx: Any, anchor: torch.Tensor, module: PooledEmbedding, batch: JaggedBatch,
        now: int | None, train: bool, prefetched: dict[str, _Resolved],
    ) -> torch.Tensor:
        b, dim = batch.batch_size, module.dim
        out = np.empty((b, len(module.slot_names), dim), np.float32)

        def work(item: tuple[str, list[str], list[int]]) -> _Resolved:
            res = prefetched.get(item[0]) or module._resolve(item, batch, now, train)
            if len(res.cols) == 1:  # pool straight into the slot's (B, D) view of the output
                res.table.pool(res.rows, res.offsets, res.scale, out=out[:, res.cols[0], :])
            else:
                pooled = res.table.pool(res.rows, res.offsets, res.scale)
                out[:, res.cols, :] = pooled.reshape(len(res.cols), b, dim).transpose(1, 0, 2)
            return res

        ctx.module = module
        ctx.saved = module._map(work, module._plan)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:
        g_all = np.asarray(grad.detach().numpy(), dtype=np.float32)
        module: PooledEmbedding = ctx.module

        def work(res: _Resolved) -> None:
            rows, unique = res.rows, res.unique
            if res.table.epoch != res.epoch:  # rows were removed since forward: re-resolve
                rows, unique = res.table.find(res.fids), None
            if len(res.cols) == 1:  # the slot's (B, D) view of the gradient, not a copy
                g = g_all[:, res.cols[0], :]
            else:
                g = np.ascontiguousarray(g_all[:, res.cols, :].transpose(1, 0, 2))
                g = g.reshape(-1, g.shape[2])
            res.table.apply_bag_gradients(rows, res.offsets, res.scale, g, unique)

        module._map(work, ctx.saved)
        return (None,) * 6


@dataclass
class _Prefetch:
    """A batch whose rows are being resolved in the background (see ``prefetch``)."""

    batch: JaggedBatch
    now: int
    future: Future[dict[str, tuple[_Resolved, int]]]  # table -> (resolved, table version)


def _yield_to_compute() -> None:
    """Lowest CPU priority for the calling thread (Linux: per-thread nice 19), so a prefetch
    takes the cycles torch's compute threads leave idle instead of preempting them."""
    if sys.platform.startswith("linux"):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


class PooledEmbedding(nn.Module):
    """Embeds the slots of a :class:`JaggedBatch`, one pooled vector per (slot, example).

    Parameters
    ----------
    tables : Mapping[str, EmbeddingTable]
        Tables by name.
    slots : Mapping[str, SlotSpec]
        Slot name -> table and pooling. Slots are returned in this order.

    Examples
    --------
    >>> from freshrec.table import EmbeddingTable, TableConfig, OptimizerConfig
    >>> item = EmbeddingTable(TableConfig(name="item", dim=4,
    ...                       optimizer=OptimizerConfig(kind="sgd", lr=0.1)))
    >>> emb = PooledEmbedding({"item": item}, {"item_id": SlotSpec(table="item"),
    ...                                         "hist": SlotSpec(table="item", pooling="mean")})
    >>> batch = JaggedBatch.from_dict({"item_id": [[1], [2]], "hist": [[2, 3], []]})
    >>> out = emb(batch, now=10)
    >>> out.shape                     # (batch, slots, dim)
    torch.Size([2, 2, 4])
    >>> before = item.lookup([1]).copy()
    >>> out.sum().backward()          # SGD step on rows 1, 2, 3 happens here
    >>> bool((item.lookup([1]) < before).all())
    True
    """

    def __init__(self, tables: Mapping[str, EmbeddingTable], slots: Mapping[str, SlotSpec]):
        super().__init__()
        self.tables = dict(tables)
        self.slots = dict(slots)
        dims = set()
        for slot, spec in self.slots.items():
            if spec.table not in self.tables:
                raise ConfigError(
                    f"PooledEmbedding: slot {slot!r} uses table {spec.table!r}, which is not "
                    f"defined (tables: {sorted(self.tables)})"
                )
            dims.add(self.tables[spec.table].dim)
        self.slot_names = list(self.slots)
        self._same_dim = len(dims) == 1
        self._groups: dict[str, list[str]] = {}
        for slot, spec in self.slots.items():
            self._groups.setdefault(spec.table, []).append(slot)
        col = {s: i for i, s in enumerate(self.slot_names)}
        self._plan = [(t, slots, [col[s] for s in slots]) for t, slots in self._groups.items()]
        self._pool: ThreadPoolExecutor | None = None
        self._pool_size = 0
        self._prefetcher: ThreadPoolExecutor | None = None
        self._pending: _Prefetch | None = None

    def _map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``[fn(x) for x in items]``, on ``torch.get_num_threads()`` threads when > 1."""
        n = min(torch.get_num_threads(), len(items))
        if n <= 1:
            return [fn(x) for x in items]
        if self._pool is None or self._pool_size != n:
            if self._pool is not None:
                self._pool.shutdown(wait=False)
            self._pool = ThreadPoolExecutor(n, thread_name_prefix="freshrec-pool")
            self._pool_size = n
        return list(self._pool.map(fn, items))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pool"], state["_pool_size"] = None, 0
        state["_prefetcher"], state["_pending"] = None, None
        return state

    @property
    def dim(self) -> int:
        """The common row width (all slots must share it for :meth:`forward`)."""
        if not self._same_dim:
            raise ConfigError("PooledEmbedding: slots have different dims; use forward_dict")
        return self.tables[self.slots[self.slot_names[0]].table].dim

    def forward(self, batch: JaggedBatch, now: int | None = None) -> torch.Tensor:
        """Pooled embeddings as one tensor of shape (batch, slots, dim).

        One autograd node covers all tables; with ``torch.get_num_threads() > 1`` the tables
        are looked up, pooled and updated in parallel (one table per task). Rows resolved by
        :meth:`prefetch` for this batch are only pooled.
        """
        if not self._same_dim:
            raise ConfigError("PooledEmbedding: slots have different dims; use forward_dict")
        train = self._check(batch, now)
        prefetched = self._claim_prefetch(batch, now, train)
        anchor = torch.empty(0, requires_grad=train)
        # torch.autograd.Function.apply carries no annotations
        return _AllTablesPool.apply(  # type: ignore[no-untyped-call]
            anchor, self, batch, now, train, prefetched)

    def forward_dict(self, batch: JaggedBatch, now: int | None = None) -> dict[str, torch.Tensor]:
        """Pooled embeddings per slot, each of shape (batch, dim of its table)."""
        train = self._check(batch, now)
        prefetched = self._claim_prefetch(batch, now, train)
        b = batch.batch_size
        out: dict[str, torch.Tensor] = {}
        anchor = torch.empty(0, requires_grad=train)
        for item in self._plan:
            res = prefetched.get(item[0]) or self._resolve(item, batch, now, train)
            pooled = _TablePool.apply(  # type: ignore[no-untyped-call]
                anchor, res.table, res.rows, res.offsets, res.scale, res.fids, res.epoch,
                res.unique)
            for i, slot in enumerate(item[1]):
                out[slot] = pooled[i * b : (i + 1) * b]
        return out

    def prefetch(self, batch: JaggedBatch, now: int) -> None:
        """Resolve the next training batch's fids to rows on a background thread.

        Call it after the forward of the current batch (e.g. before ``loss.backward()``):
        the fid -> row resolve of ``batch`` (admitting new fids, stamping ``last_seen``)
        and the dedup of its rows for the backward (:meth:`EmbeddingTable.resolve_unique`)
        then overlap this batch's dense compute, and the next ``forward(batch, now)`` only
        pools, after this batch's backward has updated the rows, so the results are those
        of the plain path. Resolving does not depend on row values, and the backward of
        earlier batches only changes values, so the two commute per table (each table's
        writer lock orders them). The background thread runs at the lowest CPU priority,
        so it uses cycles the dense compute leaves idle (a spare core, gaps between torch
        ops) rather than taking them from torch's threads.

        Until that forward, the tables must not be changed in any other way (no
        ``expire``, ``export_delta``, ``apply_delta``, direct lookups or another forward):
        the next ``forward``/``forward_dict`` must be the training forward of ``batch`` at
        ``now``, and it raises :class:`~freshrec.errors.InputError` otherwise, or when a
        table's epoch or version changed in between. Tables with a ``row_initializer`` (it
        may read other tables' values) are resolved in that forward instead.
        """
        self._check(batch, now)
        if self._pending is not None:
            raise InputError("PooledEmbedding.prefetch: the prefetched batch was not trained on")
        items = [it for it in self._plan if self.tables[it[0]].row_initializer is None]

        def work() -> dict[str, tuple[_Resolved, int]]:
            out = {}
            for item in items:
                res = self._resolve(item, batch, now, True)
                out[item[0]] = (res, res.table.version)
            return out

        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="freshrec-prefetch",
                                                  initializer=_yield_to_compute)
        self._pending = _Prefetch(batch, now, self._prefetcher.submit(work))

    def _check(self, batch: JaggedBatch, now: int | None) -> bool:
        """Validate a call; returns whether it trains (admits fids, steps in backward)."""
        train = self.training and torch.is_grad_enabled()
        if train and now is None:
            raise InputError("PooledEmbedding: `now` (event-time seconds) is required in training")
        missing = [s for s in self.slot_names if s not in batch.keys]
        if missing:
            raise InputError(f"PooledEmbedding: batch lacks slots {missing} (has {batch.keys})")
        return train

    def _claim_prefetch(
        self, batch: JaggedBatch, now: int | None, train: bool
    ) -> dict[str, _Resolved]:
        """The rows :meth:`prefetch` resolved for this call (empty without a prefetch)."""
        pending, self._pending = self._pending, None
        if pending is None:
            return {}
        resolved = pending.future.result()
        if not train or pending.batch is not batch or pending.now != now:
            raise InputError("PooledEmbedding: the call after prefetch(batch, now) must be the "
                             "training forward of that batch at that `now`")
        for res, version in resolved.values():
            if res.table.epoch != res.epoch or res.table.version != version:
                raise InputError(f"PooledEmbedding: table {res.table.name!r} was changed "
                                 "(rows removed or a delta exported) after prefetch")
        return {name: res for name, (res, _) in resolved.items()}

    def _resolve(self, item: tuple[str, list[str], list[int]], batch: JaggedBatch,
                 now: int | None, train: bool) -> _Resolved:
        """Rows of one table group; in training also the distinct rows for backward (one
        pass, :meth:`EmbeddingTable.resolve_unique`)."""
        table_name, slots, cols = item
        table = self.tables[table_name]
        fids, offsets, scale = self._gather(batch, slots)
        unique: tuple[np.ndarray, np.ndarray] | None = None
        if train and now is not None:
            rows, unique = table.resolve_unique(fids, now=now)
        else:
            rows = table.resolve(fids, now=now, train=train)
        return _Resolved(table, cols, rows, offsets, scale, fids, table.epoch, unique)

    def _gather(
        self, batch: JaggedBatch, slots: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fids, bag offsets and bag scales of the slots of one table, slot after slot."""
        parts = [batch.slot(slot) for slot in slots]
        if len(parts) == 1:  # one slot: its values and offsets as they are
            fids, offsets = parts[0]
        else:
            fids = np.concatenate([v for v, _ in parts])
            offsets = np.zeros(len(parts) * batch.batch_size + 1, np.int64)
            np.cumsum(np.concatenate([np.diff(off) for _, off in parts]), out=offsets[1:])
        scale = np.ones(offsets.shape[0] - 1, np.float32)
        b = batch.batch_size
        for i, slot in enumerate(slots):
            if self.slots[slot].pooling == "mean":
                ln = np.diff(offsets[i * b : (i + 1) * b + 1])
                scale[i * b : (i + 1) * b] = np.where(ln > 0, 1.0 / np.maximum(ln, 1), 0.0)
        return fids, offsets, scale
