"""Collisionless, expirable embedding tables.

A table maps 64-bit feature ids (fids) to float32 rows exactly: no two distinct fids share a
row (unlike hashing ids into a fixed-size ``nn.Embedding``). New fids are admitted on their
first (or ``min_count``-th) training lookup, rows idle for longer than the TTL are expired
and their memory reused, every write is stamped with a version so that the rows changed since
any version can be exported as a delta, and the whole table saves to a checksummed snapshot.

Examples
--------
>>> import numpy as np
>>> from freshrec.table import EmbeddingTable, TableConfig
>>> t = EmbeddingTable(TableConfig(name="item", dim=2, ttl_s=60))
>>> _ = t.lookup(np.array([1, 2], np.uint64), now=0, train=True)
>>> _ = t.lookup(np.array([2], np.uint64), now=100, train=True)
>>> t.expire(now=100), len(t)
(1, 1)
"""

from freshrec.table.config import (
    AdmissionConfig,
    InitializerConfig,
    InitKind,
    OptimizerConfig,
    OptimizerKind,
    TableConfig,
    table_config_from_dict,
)
from freshrec.table.delta import TableDelta
from freshrec.table.rows import TableRows
from freshrec.table.table import (
    EmbeddingTable,
    RowInitializer,
    TableStats,
    as_fids,
    rows_from_table,
)

__all__ = [
    "AdmissionConfig",
    "EmbeddingTable",
    "InitKind",
    "InitializerConfig",
    "OptimizerConfig",
    "OptimizerKind",
    "TableConfig",
    "TableDelta",
    "TableRows",
    "TableStats",
    "RowInitializer",
    "as_fids",
    "rows_from_table",
    "table_config_from_dict",
]
