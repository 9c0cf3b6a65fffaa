"""``PooledEmbedding``: pooled multi-slot lookups over embedding tables, optimizer fused in backward.

Forward resolves the fids of every slot to table rows (admitting new fids while training),
pools each bag (sum or mean) in a numba kernel and returns dense tensors that autograd flows
through. Backward does not build an embedding gradient tensor: it routes each bag's gradient
to its rows, sums duplicates and takes one optimizer step per row inside the table, as
TorchRec's fused embedding bags do. A training step is therefore
``loss.backward(); dense_opt.step()``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

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
    def forward(  # type: ignore[override]
        ctx: Any, anchor: torch.Tensor, table: EmbeddingTable, rows: np.ndarray,
        offsets: np.ndarray, scale: np.ndarray, fids: np.ndarray, epoch: int,
    ) -> torch.Tensor:
        ctx.table, ctx.rows, ctx.offsets, ctx.scale = table, rows, offsets, scale
        ctx.fids, ctx.epoch = fids, epoch
        return torch.from_numpy(table.pool(rows, offsets, scale))

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # type: ignore[override]
        table: EmbeddingTable = ctx.table
        rows = ctx.rows
        if table.epoch != ctx.epoch:  # rows were removed since forward: re-resolve
            rows = table.find(ctx.fids)
        g = np.ascontiguousarray(grad.detach().numpy(), dtype=np.float32)
        table.apply_bag_gradients(rows, ctx.offsets, ctx.scale, g)
        return (None,) * 7


class _AllTablesPool(torch.autograd.Function):
    """Pool every table group into one (B, F, D) tensor; backward steps every table.

    The per-table work (resolve + pool forward, gradient routing + optimizer step backward)
    runs on ``module``'s worker threads, one table per task; the numba kernels release the
    GIL, and each table has its own locks, so tables proceed in parallel.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, anchor: torch.Tensor, module: PooledEmbedding, batch: JaggedBatch,
        now: int | None, train: bool,
    ) -> torch.Tensor:
        b, dim = batch.batch_size, module.dim
        out = np.empty((b, len(module.slot_names), dim), np.float32)

        def work(item: tuple[str, list[str], list[int]]) -> tuple[Any, ...]:
            table_name, slots, cols = item
            table = module.tables[table_name]
            fids, offsets, scale = module._gather(batch, slots)
            rows = table.resolve(fids, now=now, train=train)
            epoch = table.epoch
            pooled = table.pool(rows, offsets, scale)
            out[:, cols, :] = pooled.reshape(len(slots), b, dim).transpose(1, 0, 2)
            return table, cols, rows, offsets, scale, fids, epoch

        ctx.module = module
        ctx.saved = module._map(work, module._plan)
        return torch.from_numpy(out)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, ...]:  # type: ignore[override]
        g_all = grad.detach().numpy()
        module: PooledEmbedding = ctx.module

        def work(saved: tuple[Any, ...]) -> None:
            table, cols, rows, offsets, scale, fids, epoch = saved
            if table.epoch != epoch:  # rows were removed since forward: re-resolve
                rows = table.find(fids)
            g = np.ascontiguousarray(g_all[:, cols, :].transpose(1, 0, 2), dtype=np.float32)
            table.apply_bag_gradients(rows, offsets, scale, g.reshape(-1, g.shape[2]))

        module._map(work, ctx.saved)
        return (None,) * 5


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
        are looked up, pooled and updated in parallel (one table per task).
        """
        if not self._same_dim:
            raise ConfigError("PooledEmbedding: slots have different dims; use forward_dict")
        train = self.training and torch.is_grad_enabled()
        if train and now is None:
            raise InputError("PooledEmbedding: `now` (event-time seconds) is required in training")
        missing = [s for s in self.slot_names if s not in batch.keys]
        if missing:
            raise InputError(f"PooledEmbedding: batch lacks slots {missing} (has {batch.keys})")
        anchor = torch.empty(0, requires_grad=train)
        return _AllTablesPool.apply(anchor, self, batch, now, train)

    def forward_dict(self, batch: JaggedBatch, now: int | None = None) -> dict[str, torch.Tensor]:
        """Pooled embeddings per slot, each of shape (batch, dim of its table)."""
        train = self.training and torch.is_grad_enabled()
        if train and now is None:
            raise InputError("PooledEmbedding: `now` (event-time seconds) is required in training")
        missing = [s for s in self.slot_names if s not in batch.keys]
        if missing:
            raise InputError(f"PooledEmbedding: batch lacks slots {missing} (has {batch.keys})")
        b = batch.batch_size
        out: dict[str, torch.Tensor] = {}
        anchor = torch.empty(0, requires_grad=train)
        for table_name, slots in self._groups.items():
            table = self.tables[table_name]
            fids, offsets, scale = self._gather(batch, slots)
            rows = table.resolve(fids, now=now, train=train)
            pooled = _TablePool.apply(anchor, table, rows, offsets, scale, fids, table.epoch)
            for i, slot in enumerate(slots):
                out[slot] = pooled[i * b : (i + 1) * b]
        return out

    def _gather(
        self, batch: JaggedBatch, slots: list[str]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        vals, lens = [], []
        for slot in slots:
            v, off = batch.slot(slot)
            vals.append(v)
            lens.append(np.diff(off))
        lengths = np.concatenate(lens) if len(lens) > 1 else lens[0]
        fids = np.concatenate(vals) if len(vals) > 1 else vals[0]
        offsets = np.zeros(lengths.shape[0] + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        scale = np.ones(lengths.shape[0], np.float32)
        b = batch.batch_size
        for i, slot in enumerate(slots):
            if self.slots[slot].pooling == "mean":
                ln = lengths[i * b : (i + 1) * b]
                scale[i * b : (i + 1) * b] = np.where(ln > 0, 1.0 / np.maximum(ln, 1), 0.0)
        return fids, offsets, scale
