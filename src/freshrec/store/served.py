"""Serving's view of a table kept in Redis: rows read per request, a short-lived local copy,
a time budget and a fallback.

:class:`ServedRedisTable` is an :class:`~freshrec.table.EmbeddingTable` whose :meth:`find`
first makes sure its local copy of the asked rows is fresh: rows read from Redis less than
``store.serve_cache_ms`` ago are used as they are, the others are read in one batched read
(``MGET``; per node on a cluster) within ``store.serve_timeout_ms``. From one server
(``redis://``, ``unix://``) the read goes through the lean
:class:`~freshrec.store.wire.WireClient` (one socket, a short spin before sleeping, the
budget covering connect, send and read); from a Redis Cluster or over TLS through
redis-py's client under a socket timeout of the budget (:func:`read_client`). A fid
Redis does not have reads as the default row (zeros). When Redis is slow or down the request
does not fail: rows with a local copy keep it (however old), rows without one get the
fallback (``zeros``, or ``init``: the row the table's initializer gives the fid, where
training starts it), every such row is counted, and Redis is not asked again for
``store.retry_backoff_s``. The local copy holds at most ``store.serve_cache_rows`` rows, the
least recently read leave first.

The predictor pools rows with ``find`` then ``pool`` (and redoes both when rows were
removed in between), so nothing else in serving changes. Counters are exported on
``/metrics`` by :func:`render_metrics`.

Examples
--------
>>> from freshrec.table import TableConfig
>>> from freshrec.store.config import StoreConfig
>>> cfg = TableConfig(name="doc_user", dim=2, backend="redis",
...                   store=StoreConfig(url="redis://127.0.0.1:1/0", serve_timeout_ms=50))
>>> t = ServedRedisTable(cfg)            # nothing listens on port 1: every read falls back
>>> t.lookup([7]).tolist(), t.counters["fallback_rows"]
([[0.0, 0.0]], 1)
>>> t.close()
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec.store.client import RowKeys, RowStore, open_client
from freshrec.store.config import ServeFallback, TableBackend
from freshrec.store.rules import row_initializer
from freshrec.store.wire import DEFAULT_SPIN_US, WIRE_SCHEMES, WireClient
from freshrec.stream._redis import is_lost
from freshrec.table.config import AdmissionConfig, TableConfig
from freshrec.table.delta import TableDelta
from freshrec.table.table import EmbeddingTable, as_fids

if TYPE_CHECKING:
    from freshrec.stream._redis import Client

__all__ = ["ServedRedisTable", "read_client", "serving_tables", "render_metrics"]

log = logging.getLogger(__name__)

#: Counters per table name, for the process (monotonic across reloads of a table).
_COUNTERS: dict[str, dict[str, int]] = {}
_KEYS = ("reads", "cache_hits", "redis_reads", "redis_errors", "fallback_rows", "stale_rows",
         "missing")


def read_client(url: str, name: str, timeout_s: float, *, wire: bool = True,
                spin_us: float = DEFAULT_SPIN_US) -> Client | WireClient:
    """Serving's client for ``url``: a :class:`~freshrec.store.wire.WireClient` for one
    server (``redis://``, ``unix://``) unless ``wire`` is False, else redis-py's (a cluster
    client for ``redis+cluster://``, which routes each key by its hash slot and follows
    MOVED/ASK), with socket timeouts of ``timeout_s``.

    Examples
    --------
    >>> c = read_client("redis://127.0.0.1:6379/0", "user", 0.005)
    >>> type(c).__name__, c.timeout_s, c.spin_ns
    ('WireClient', 0.005, 100000)
    >>> c.close()
    """
    if wire and url.startswith(WIRE_SCHEMES):
        return WireClient(url, timeout_s=timeout_s, spin_us=spin_us)
    return open_client(url, name, timeout_s=timeout_s)


def serving_tables(tables: Mapping[str, EmbeddingTable]) -> dict[str, EmbeddingTable]:
    """``tables`` with each ``backend: redis`` table replaced by a :class:`ServedRedisTable`
    of the same config (one already served that way is kept). The new table starts at the
    registry version of the one it replaces, so registry deltas go on applying to it (a
    worker's :class:`~freshrec.serve.shared.SharedTable` has none: the parent process of
    ``serve --workers N`` follows the registry, and each worker reads Redis itself)."""
    out: dict[str, EmbeddingTable] = {}
    for name, t in tables.items():
        if t.config.backend is TableBackend.REDIS and not isinstance(t, ServedRedisTable):
            served = ServedRedisTable(t.config)
            served.apply_delta(TableDelta.empty(
                t.name, t.config.fingerprint(), dim=t.dim, from_version=0,
                to_version=getattr(t, "applied_version", 0)), check_version=False)
            t = served
        out[name] = t
    return out


class ServedRedisTable(EmbeddingTable):
    """A table whose rows serving reads from Redis; see the module docstring.

    Parameters
    ----------
    config : TableConfig
        With ``backend: redis``.
    client : redis client or WireClient, optional
        Defaults to :func:`read_client` for ``config.store.url`` with the serving budget.
    wire, spin_us
        Passed to :func:`read_client` (``wire=False``: redis-py's client for one server
        too; the benchmarks compare both).
    """

    def __init__(self, config: TableConfig, *, client: Client | WireClient | None = None,
                 wire: bool = True, spin_us: float = DEFAULT_SPIN_US) -> None:
        super().__init__(config)
        sc = config.store
        self._owns_client = client is None
        self._client = client if client is not None else read_client(
            sc.url, config.name, sc.serve_timeout_ms / 1000.0, wire=wire, spin_us=spin_us)
        self.rows_store = RowStore(self._client, RowKeys(sc.prefix, config.name),
                                   config.dim + config.state_dim, batch_keys=sc.batch_keys)
        self._read_at: OrderedDict[int, float] = OrderedDict()
        self._lock = threading.Lock()
        self._inside = threading.local()  # set while the table updates its local copy
        self._down_until = 0.0
        self._init: EmbeddingTable | None = None
        #: ``reads``: rows asked; ``cache_hits``: served from a fresh local copy;
        #: ``redis_reads``: round trips; ``redis_errors``: failed ones; ``fallback_rows``:
        #: rows served by the fallback; ``stale_rows``: rows served from an old local copy
        #: while Redis was out of reach; ``missing``: rows Redis does not have.
        #: Shared by the tables of this name in the process.
        self.counters = _COUNTERS.setdefault(config.name, dict.fromkeys(_KEYS, 0))

    def __repr__(self) -> str:
        return f"ServedRedisTable(name={self.name!r}, dim={self.dim}, cached={len(self)})"

    def find(self, fids: Any) -> np.ndarray:
        """Row ids of ``fids`` after refreshing the local copy of those not read recently."""
        f = as_fids(fids, f"ServedRedisTable {self.name!r}: fids")
        if f.shape[0] and not getattr(self._inside, "on", False):
            self._refresh(f)
        return super().find(f)

    def lookup(self, fids: Any, *, now: int | None = None, train: bool = False) -> np.ndarray:
        """Rows of ``fids`` (the default row where absent), read as :meth:`find` does."""
        f = as_fids(fids, f"ServedRedisTable {self.name!r}: fids")
        if f.shape[0] and not train and not getattr(self._inside, "on", False):
            self._refresh(f)
        return super().lookup(f, now=now, train=train)

    def _refresh(self, f: np.ndarray) -> None:
        sc = self.config.store
        t = time.monotonic()
        fresh_after = t - sc.serve_cache_ms / 1000.0
        with self._lock:
            read_at = self._read_at
            stale = [x for x in dict.fromkeys(f.tolist())
                     if read_at.get(x, -1.0) < fresh_after]
            self.counters["reads"] += f.shape[0]
            self.counters["cache_hits"] += f.shape[0] - len(stale)
            down = t < self._down_until
        if not stale:
            return
        want = np.array(stale, np.uint64)
        if down:
            self._fallback(want)
            return
        try:
            values, found = self.rows_store.get(want)
        except Exception as e:
            if not is_lost(e):
                raise
            with self._lock:
                self.counters["redis_errors"] += 1
                self._down_until = time.monotonic() + sc.retry_backoff_s
            log.warning("store table=%s: Redis read failed (%s: %s); serving fallbacks",
                        self.name, type(e).__name__, e)
            self._fallback(want)
            return
        self.counters["redis_reads"] += 1
        self.counters["missing"] += int((~found).sum())
        self._install(want[found], values[found, : self.dim], want[~found])
        with self._lock:
            for x in stale:
                read_at[x] = t
                read_at.move_to_end(x)
            over = len(read_at) - sc.serve_cache_rows
            old = [read_at.popitem(last=False)[0] for _ in range(max(over, 0))]
        if old:
            self._install(np.empty(0, np.uint64), np.empty((0, self.dim), np.float32),
                          np.array(old, np.uint64))

    def _fallback(self, fids: np.ndarray) -> None:
        """Rows Redis could not give in time: an old local copy, else the fallback row."""
        have = super().find(fids) >= 0
        self.counters["stale_rows"] += int(have.sum())
        self.counters["fallback_rows"] += int((~have).sum())
        if self.config.store.serve_fallback is ServeFallback.INIT and (~have).any():
            self._install(fids[~have], self._init_rows(fids[~have]), np.empty(0, np.uint64))

    def _init_rows(self, fids: np.ndarray) -> np.ndarray:
        """The rows training would start ``fids`` from: the new-user source when it is
        ``fixed`` or ``table``, else the initializer's (deterministic per seed and fid)."""
        if self._init is None:
            cfg = self.config
            self._init = EmbeddingTable(TableConfig(
                name=cfg.name, dim=cfg.dim, initializer=cfg.initializer,
                admission=AdmissionConfig()))
            self._init.row_initializer = row_initializer(cfg.store.new_user, cfg.dim)
        rows = self._init.lookup(fids, now=0, train=True)
        self._init.apply_delta(TableDelta(  # forget them: the scratch table stays small
            table=self.name, fingerprint=self._init.config.fingerprint(), from_version=0,
            to_version=0, fids=np.empty(0, np.uint64), values=np.empty((0, self.dim),
                                                                       np.float32),
            last_seen=np.empty(0, np.uint32), states=None, expired=fids), check_version=False)
        self._init.forget_expired_before(self._init.version)
        return rows

    def _install(self, fids: np.ndarray, values: np.ndarray, gone: np.ndarray) -> None:
        """Upsert rows into the local copy and remove ``gone`` (absent from Redis)."""
        if gone.shape[0]:
            gone = gone[super().find(gone) >= 0]
        if not fids.shape[0] and not gone.shape[0]:
            return
        self._inside.on = True
        try:
            self._apply(fids, values, gone)
        finally:
            self._inside.on = False

    def _apply(self, fids: np.ndarray, values: np.ndarray, gone: np.ndarray) -> None:
        self.apply_delta(TableDelta(
            table=self.name, fingerprint=self.config.fingerprint(),
            from_version=self.applied_version, to_version=self.applied_version, fids=fids,
            values=np.ascontiguousarray(values, np.float32),
            last_seen=np.zeros(fids.shape[0], np.uint32), states=None, expired=gone,
        ), check_version=False)
        if gone.shape[0]:
            self.forget_expired_before(self.version)

    def close(self) -> None:
        """Close the Redis client (when this table opened it)."""
        if self._owns_client:
            self._client.close()


def render_metrics() -> str:
    """Prometheus text of the :class:`ServedRedisTable` counters of this process, per table
    name (``""`` when no table is served from Redis)."""
    if not _COUNTERS:
        return ""
    lines = []
    for key, what in (("reads", "rows asked"), ("cache_hits", "rows served from a fresh "
                      "local copy"), ("redis_reads", "batched reads sent to Redis"),
                      ("redis_errors", "Redis reads that failed or timed out"),
                      ("fallback_rows", "rows served by the fallback (Redis out of reach)"),
                      ("stale_rows", "rows served from an old local copy (Redis out of "
                       "reach)"), ("missing", "rows Redis does not have")):
        name = f"freshrec_store_{key}_total"
        lines += [f"# HELP {name} {what}", f"# TYPE {name} counter"]
        lines += [f'{name}{{table="{t}"}} {c[key]}' for t, c in sorted(_COUNTERS.items())]
    return "\n".join(lines) + "\n"
