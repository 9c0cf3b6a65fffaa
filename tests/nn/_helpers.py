"""Shared builders for the PooledEmbedding tests: three tables, jagged batches over slots."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from freshrec.features import JaggedBatch
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.table import EmbeddingTable, InitializerConfig, OptimizerConfig, TableConfig


def three_tables(slots: Mapping[str, tuple[str, str]], opt: str = "adagrad",
                 capacity_hint: int | None = None
                 ) -> tuple[PooledEmbedding, dict[str, EmbeddingTable]]:
    """Tables t1..t3 (dim 3, seeded normal init, ``opt`` at lr 0.5) and a module over
    ``slots`` (slot -> (table, pooling))."""
    extra = {} if capacity_hint is None else {"capacity_hint": capacity_hint}
    tables = {n: EmbeddingTable(TableConfig(
        name=n, dim=3, initializer=InitializerConfig(kind="normal", std=0.3, seed=i),
        optimizer=OptimizerConfig(kind=opt, lr=0.5), **extra))
        for i, n in enumerate(["t1", "t2", "t3"])}
    specs = {s: SlotSpec(table=t, pooling=p) for s, (t, p) in slots.items()}
    return PooledEmbedding(tables, specs), tables


def jagged_batches(slots: Mapping[str, object], seed: int, n: int, b: int = 32,
                   vocab: Callable[[int], int] = lambda step: 40) -> list[JaggedBatch]:
    """``n`` batches of ``b`` rows, 0-3 ids per row and slot, ids below ``vocab(step)``."""
    rng = np.random.default_rng(seed)
    out = []
    for step in range(n):
        data = {}
        for s in slots:
            lens = rng.integers(0, 4, size=b)
            data[s] = (rng.integers(0, vocab(step), size=int(lens.sum())).astype(np.uint64),
                       lens)
        out.append(JaggedBatch.from_dict(data))
    return out
