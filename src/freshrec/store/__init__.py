"""Redis as the embedding store shared by training and serving.

A table configured with ``backend: redis`` keeps its rows in Redis (one server or a Redis
Cluster) instead of the process: the trainer works on a write-back cache of them
(:class:`RedisTable`, flushed after each checkpoint, exactly once across crashes), servers
read a user's rows per request with a short-lived local copy and a time budget
(:class:`ServedRedisTable`), rows expire through Redis TTLs set again on every write, and
new rows can start from another model's estimate. The in-process
:class:`~freshrec.table.EmbeddingTable` stays the default; one config line moves a table.

Examples
--------
>>> from freshrec.store import StoreConfig, TableBackend
>>> TableBackend("redis"), StoreConfig().prefix
(<TableBackend.REDIS: 'redis'>, 'freshrec')
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from freshrec._lazy import lazy_attribute
from freshrec.store.config import (
    NewUserInitConfig,
    NewUserSource,
    ServeFallback,
    StoreConfig,
    TableBackend,
    UpdateRulesConfig,
    store_config_from_dict,
)

if TYPE_CHECKING:
    from freshrec.store.client import RowKeys, RowStore
    from freshrec.store.table import RedisTable, flush_tables, open_table

__all__ = [
    "NewUserInitConfig",
    "NewUserSource",
    "RedisTable",
    "RowKeys",
    "RowStore",
    "ServeFallback",
    "StoreConfig",
    "TableBackend",
    "UpdateRulesConfig",
    "flush_tables",
    "open_table",
    "store_config_from_dict",
]

# freshrec.table.config imports this package's config; the classes built on tables are
# imported on first use, so importing freshrec.table never imports them half-way.
_LAZY = {"RowKeys": "client", "RowStore": "client", "RedisTable": "table",
         "flush_tables": "table", "open_table": "table"}


def __getattr__(name: str) -> Any:
    return lazy_attribute(__name__, _LAZY, name)
