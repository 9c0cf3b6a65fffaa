"""What a feature costs: embedding memory, lookup and pooling time, sequence length.

For each slot of a trained model, over a data set:

- ``memory_bytes``: the table rows the slot's ids hold (its distinct fids in the data that
  are in the table) times the table's measured bytes per row (``TableStats.bytes_used /
  capacity``: the row, its optimizer state, its metadata and its share of the index; the
  table allocates rows ahead, so this is what each live row adds). Slots sharing rows
  (one id space) each count them: removing one of them frees only what the other does not
  use.
- ``lookup_us``: the measured time to look up and pool the slot's ids, per example, with a
  :class:`~freshrec.nn.PooledEmbedding` of that slot alone (read-only, no admission).
- ``length``: the mean number of ids per example (1 for a single-valued slot that is set).

A dense feature has no table and no lookup: zero memory and time, length 1.

Examples
--------
>>> FeatureCost(name="a", kind="slot", memory_bytes=1024, lookup_us=0.5, length=1.0).cost(
...     "memory")
1024.0
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pyarrow as pa
import torch

from freshrec.errors import InputError
from freshrec.features.jagged import JaggedBatch
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from freshrec.table.table import EmbeddingTable

if TYPE_CHECKING:
    from freshrec.train.trainer import Trainer

__all__ = ["Budget", "FeatureCost", "feature_costs"]

#: What a budget limits: table memory (bytes) or lookup time (microseconds per example).
Budget = Literal["memory", "latency"]


@dataclass(frozen=True, kw_only=True)
class FeatureCost:
    """The cost of one slot or dense feature (module docstring)."""

    name: str
    kind: Literal["slot", "dense"]
    memory_bytes: int
    lookup_us: float
    length: float

    def cost(self, budget: Budget) -> float:
        """The cost a ``budget`` counts: bytes for ``memory``, microseconds for ``latency``."""
        return float(self.memory_bytes) if budget == "memory" else self.lookup_us


def _bytes_per_row(table: EmbeddingTable) -> float:
    """Allocated bytes of ``table`` per row it has room for."""
    st = table.stats()
    return st.bytes_used / max(st.capacity, 1)


def feature_costs(trainer: Trainer, batches: Iterable[pa.RecordBatch], *,
                  repeats: int = 3) -> dict[str, FeatureCost]:
    """The cost of every slot and dense feature of ``trainer``'s model on ``batches`` (raw
    record batches, encoded in ``train.batch_size`` rows). Lookups are timed ``repeats``
    times per batch and the fastest kept. The tables are only read.

    Raises
    ------
    InputError
        ``batches`` is empty.
    """
    from freshrec.train.trainer import rebatch

    fc = trainer.config.features
    specs = {s.name: s for s in fc.slots}
    single = {s.name: PooledEmbedding({s.table: trainer.tables[s.table]},
                                      {s.name: SlotSpec(table=s.table, pooling=s.pooling)})
              for s in fc.slots}
    for module in single.values():
        module.eval()
    fids: dict[str, list[np.ndarray]] = {n: [] for n in specs}
    seconds = dict.fromkeys(specs, 0.0)
    values = dict.fromkeys(specs, 0)
    examples = 0
    for rb in rebatch(batches, trainer.config.train.batch_size):
        enc = trainer.schema.encode(rb, with_labels=False)
        examples += enc.size
        for name in specs:
            v, off = enc.sparse.slot(name)
            fids[name].append(np.unique(v))
            values[name] += len(v)
            batch = JaggedBatch.from_dict({name: (v, np.diff(off))})
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                with torch.no_grad():
                    single[name](batch, None)
                best = min(best, time.perf_counter() - t0)
            seconds[name] += best
    if not examples:
        raise InputError("feature_costs: no examples in the data")
    out: dict[str, FeatureCost] = {}
    for name, spec in specs.items():
        table = trainer.tables[spec.table]
        distinct = np.unique(np.concatenate(fids[name]))
        rows = int((table.find(distinct) >= 0).sum()) if len(distinct) else 0
        out[name] = FeatureCost(name=name, kind="slot",
                                memory_bytes=int(round(rows * _bytes_per_row(table))),
                                lookup_us=seconds[name] / examples * 1e6,
                                length=values[name] / examples)
    for d in fc.dense:
        out[d.name] = FeatureCost(name=d.name, kind="dense", memory_bytes=0, lookup_us=0.0,
                                  length=1.0)
    return out
