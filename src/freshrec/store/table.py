"""The trainer's view of a table kept in Redis: an in-process write-back cache of its rows.

:class:`RedisTable` is an :class:`~freshrec.table.EmbeddingTable` (same lookups, admission,
optimizers, kernels) whose rows are faulted in from Redis the first time a lookup needs them
and written back by :meth:`RedisTable.flush`. Rows are stored in Redis with their optimizer
state (``dim + state_dim`` float32s), so a row that left the cache, or a trainer restarted
on another machine, continues with the same accumulator: the Redis table follows exactly
the trajectory of an in-process table on the same gradient stream.

Exactly once across crashes
---------------------------
A flush writes the rows changed since the previous flush, and only after a checkpoint
holding them: :meth:`RedisTable.save` (called by the checkpoint) records the flush position
(the table version up to which Redis is known to hold every row) beside the cache's
snapshot, and :func:`flush_tables` pushes after the checkpoint is in place. A crash during
the push leaves Redis with some rows at the checkpoint and some before it; the restarted
trainer loads the checkpoint, whose :meth:`RedisTable.load` pushes every row changed since
the recorded position again (the values are absolute, so writing them twice is writing them
once), then replays the input after the checkpoint's offsets. Rows changed after a
checkpoint never reach Redis before the next one, so nothing a restart replays is in Redis
already. Only clean rows leave the cache, right after a complete flush.

Examples
--------
>>> from freshrec.table import TableConfig
>>> from freshrec.store.config import StoreConfig
>>> cfg = TableConfig(name="user", dim=2, backend="redis",
...                   store=StoreConfig(url="redis://127.0.0.1:1/0"))
>>> type(open_table(cfg)).__name__, type(open_table(TableConfig(name="x", dim=2))).__name__
('RedisTable', 'EmbeddingTable')
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from freshrec._io import atomic_write_bytes
from freshrec._retry import Backoff
from freshrec.errors import InputError
from freshrec.store.client import RowKeys, RowStore, open_client
from freshrec.store.config import NewUserSource, TableBackend
from freshrec.store.rules import limit_rows, row_initializer, state_initializer
from freshrec.stream._redis import is_lost
from freshrec.table.config import TableConfig
from freshrec.table.delta import TableDelta
from freshrec.table.table import EmbeddingTable, TableStats, as_fids

if TYPE_CHECKING:
    from freshrec.stream._redis import Client

__all__ = ["RedisTable", "open_table", "flush_tables"]

log = logging.getLogger(__name__)

STORE_STATE = "store.json"
EVENTS = "store_events.npy"


def open_table(config: TableConfig, client: Client | None = None) -> EmbeddingTable:
    """The table ``config`` asks for: a :class:`RedisTable` for ``backend: redis``, else an
    in-process :class:`~freshrec.table.EmbeddingTable`."""
    if config.backend is TableBackend.REDIS:
        return RedisTable(config, client=client)
    return EmbeddingTable(config)


def flush_tables(tables: Mapping[str, EmbeddingTable]) -> int:
    """Flush every :class:`RedisTable` among ``tables`` (after a checkpoint); rows written."""
    return sum(t.flush() for t in tables.values() if isinstance(t, RedisTable))


class RedisTable(EmbeddingTable):
    """An embedding table whose rows live in Redis; see the module docstring.

    Parameters
    ----------
    config : TableConfig
        With ``backend: redis`` and its ``store`` section.
    client : redis client, optional
        Defaults to one for ``config.store.url``.
    """

    def __init__(self, config: TableConfig, *, client: Client | None = None) -> None:
        super().__init__(config)
        sc = config.store
        source = (EmbeddingTable.from_snapshot(sc.new_user.table_path)
                  if sc.new_user.source is NewUserSource.TABLE else None)
        self._init = row_initializer(sc.new_user, config.dim, source)
        self._init_state = (state_initializer(source, config.state_dim)
                            if source is not None and sc.new_user.with_state else None)
        self._owns_client = client is None
        self._client = client if client is not None else open_client(sc.url, config.name)
        self.rows_store = RowStore(self._client, RowKeys(sc.prefix, config.name),
                                   config.dim + config.state_dim, ttl_ms=sc.ttl_ms,
                                   batch_keys=sc.batch_keys)
        #: Redis holds every row as of this table version (the flush position).
        self.flushed_version = 0
        #: Counters: rows faulted in from Redis, rows flushed, flushes, rows evicted from
        #: the cache, times Redis could not be reached (each retried with back-off).
        self.store_counters = {"faulted": 0, "flushed": 0, "flushes": 0, "evicted": 0,
                               "errors": 0}
        self._expected: dict[int, np.ndarray] = {}
        if sc.new_user.source is not NewUserSource.NONE:
            self.row_initializer = self._new_rows
        self._rules = sc.update_rules
        self._row_fids = np.zeros(0, np.uint64)   # fid of each row id resolved for training
        self._events: dict[int, int] = {}         # training examples per fid, up to min_events

    def __repr__(self) -> str:
        return (f"RedisTable(name={self.name!r}, dim={self.dim}, cached={len(self)}, "
                f"keys={self.rows_store.keys.base.decode()!r})")

    # ------------------------------------------------------------------ Redis, retried
    def _retrying(self, what: str, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)``, waiting with back-off while Redis cannot be reached: the trainer
        never goes on without a row (it would start it again) or a write."""
        backoff = Backoff(first_s=max(self.config.store.retry_backoff_s, 1e-3))
        while True:
            try:
                return fn(*args)
            except Exception as e:
                if not is_lost(e):
                    raise
                self.store_counters["errors"] += 1
                delay = backoff.next()
                log.warning("store table=%s: %s failed (%s: %s); retrying in %.2fs",
                            self.name, what, type(e).__name__, e, delay)
                time.sleep(delay)

    # ------------------------------------------------------------------ reads
    def _fault_in(self, fids: np.ndarray) -> None:
        """Copy the rows of ``fids`` that the cache lacks and Redis has into the cache."""
        present = self.find(fids)
        miss = np.unique(fids[present < 0])
        if not miss.shape[0]:
            return
        values, found = self._retrying("read", self.rows_store.get, miss)
        if not found.any():
            return
        dim = self.dim
        with self._writer:  # a row another thread brought in meanwhile (and maybe trained) stays
            fids, got = miss[found], values[found]
            still = self.find(fids) < 0
            fids, got = fids[still], got[still]
            self.apply_delta(TableDelta(
                table=self.name, fingerprint=self.config.fingerprint(),
                from_version=self.applied_version, to_version=self.applied_version,
                fids=fids, values=np.ascontiguousarray(got[:, :dim]),
                last_seen=np.zeros(got.shape[0], np.uint32),
                states=np.ascontiguousarray(got[:, dim:]), expired=np.empty(0, np.uint64),
            ), check_version=False)
        self.store_counters["faulted"] += int(fids.shape[0])

    def resolve(self, fids: Any, *, now: int | None = None, train: bool = False) -> np.ndarray:
        """:meth:`EmbeddingTable.resolve` after reading the rows the cache lacks from Redis."""
        f = as_fids(fids, f"RedisTable {self.name!r}: fids")
        self._fault_in(f)
        rows = super().resolve(f, now=now, train=train)
        if train and self._rules.active:
            self._note(f, rows)
        return rows

    # ------------------------------------------------------------------ new rows, rules
    def expect_new_rows(self, rows: dict[int, np.ndarray]) -> None:
        """Rows that fids created by the next lookup start from (``history_mean``: set by
        :func:`~freshrec.store.rules.prepare_new_rows` before each batch)."""
        self._expected = rows

    def _new_rows(self, fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._init is not None:
            return self._init(fids)
        out = np.zeros((fids.shape[0], self.dim), np.float32)
        mask = np.zeros(fids.shape[0], bool)
        for i, f in enumerate(fids.tolist()):
            row = self._expected.get(f)
            if row is not None:
                out[i], mask[i] = row, True
        return out, mask

    def _insert(self, new: np.ndarray, now: np.uint32) -> np.ndarray:
        """:meth:`EmbeddingTable._insert`, then the ``table`` source's optimizer states
        (``with_state``) for the new rows it has."""
        out = super()._insert(new, now)
        if self._init_state is not None:
            states, found = self._init_state(new)
            with self._mutex:
                self._state[out[found]] = states[found]
        return out

    def _note(self, f: np.ndarray, rows: np.ndarray) -> None:
        """Remember the fid of each row resolved for training (the backward pass gets rows)."""
        ok = rows >= 0
        if ok.any():
            top = int(rows[ok].max()) + 1
            if top > self._row_fids.shape[0]:
                grown = np.zeros(max(top, 2 * self._row_fids.shape[0]), np.uint64)
                grown[: self._row_fids.shape[0]] = self._row_fids
                self._row_fids = grown
            self._row_fids[rows[ok]] = f[ok]

    def _limited(self, occurrences: np.ndarray, step: Any) -> int:
        """Run ``step()`` (an optimizer step on the rows of ``occurrences``, a fid per
        training example using it) and keep of it only what the update rules allow."""
        occurrences = occurrences[self.find(occurrences) >= 0]
        fids, counts = np.unique(occurrences, return_counts=True)
        k = self._rules.min_events
        if k:  # events counted at the step (not at lookup: a prefetch looks up ahead)
            ev = self._events
            for fid, c in zip(fids.tolist(), counts.tolist(), strict=True):
                ev[fid] = min(ev.get(fid, 0) + c, k)
        before = self.read_rows(fids, with_state=True)
        n = int(step())
        after = self.read_rows(fids, with_state=True)
        allowed = np.array([self._events.get(f, 0) >= k for f in fids.tolist()], bool) \
            if k else np.ones(fids.shape[0], bool)
        values = limit_rows(before.values, after.values, self._rules, allowed)
        states = None
        if after.states is not None and before.states is not None:
            states = np.where(allowed[:, None], after.states, before.states).astype(np.float32)
        self.apply_delta(TableDelta(
            table=self.name, fingerprint=self.config.fingerprint(),
            from_version=self.applied_version, to_version=self.applied_version, fids=fids,
            values=values, last_seen=after.last_seen, states=states,
            expired=np.empty(0, np.uint64)), check_version=False)
        return n

    def apply_gradients(self, fids: Any, grads: Any, *, now: int | None = None) -> int:
        """:meth:`EmbeddingTable.apply_gradients`, limited by ``store.update_rules``."""
        if not self._rules.active or self.frozen:
            return super().apply_gradients(fids, grads, now=now)
        f = as_fids(fids, f"RedisTable {self.name!r}.apply_gradients: fids")
        return self._limited(f, lambda: super(RedisTable, self).apply_gradients(
            f, grads, now=now))

    def apply_bag_gradients(
        self, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray, grad_out: np.ndarray,
        unique: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """:meth:`EmbeddingTable.apply_bag_gradients`, limited by ``store.update_rules``."""
        if not self._rules.active or self.frozen:
            return super().apply_bag_gradients(rows, offsets, scale, grad_out, unique)
        u = self.unique_rows(rows) if unique is None else unique
        return self._limited(self._row_fids[rows[rows >= 0]], lambda: super(
            RedisTable, self).apply_bag_gradients(rows, offsets, scale, grad_out, u))

    def lookup(self, fids: Any, *, now: int | None = None, train: bool = False) -> np.ndarray:
        """:meth:`EmbeddingTable.lookup` after reading the rows the cache lacks from Redis."""
        f = as_fids(fids, f"RedisTable {self.name!r}: fids")
        if not train:
            self._fault_in(f)
        return super().lookup(f, now=now, train=train)

    # ------------------------------------------------------------------ writes
    def flush(self) -> int:
        """Write the rows changed since the last flush to Redis (TTL set again), then let the
        least recently written rows leave the cache down to ``store.cache_rows``; returns
        the rows written. Call it after a checkpoint (see the module docstring)."""
        with self._writer:
            delta = self.read_delta(self.flushed_version, with_state=True)
            sealed = self.seal_version()
        self._push(delta)
        self.flushed_version = sealed
        self.store_counters["flushes"] += 1
        self._evict()
        return delta.num_rows

    def _push(self, delta: TableDelta) -> None:
        if not delta.num_rows:
            return
        states = delta.states if delta.states is not None else np.zeros((delta.num_rows, 0),
                                                                        np.float32)
        values = np.concatenate([delta.values, states], axis=1)
        self._retrying("write", self.rows_store.put, delta.fids, values)
        self.store_counters["flushed"] += delta.num_rows

    def _evict(self) -> None:
        """Remove clean rows, least recently written first, down to ``cache_rows``."""
        extra = len(self) - self.config.store.cache_rows
        if extra <= 0:
            return
        with self._writer:
            rows = self.read_rows(with_state=False)
            clean = np.flatnonzero(rows.versions <= self.flushed_version)
            order = clean[np.argsort(rows.versions[clean], kind="stable")][:extra]
            gone = rows.fids[order]
            self.apply_delta(TableDelta(
                table=self.name, fingerprint=self.config.fingerprint(),
                from_version=self.applied_version, to_version=self.applied_version,
                fids=np.empty(0, np.uint64), values=np.empty((0, self.dim), np.float32),
                last_seen=np.empty(0, np.uint32), states=None, expired=gone,
            ), check_version=False)
            self.forget_expired_before(self.version)
        self.store_counters["evicted"] += int(gone.shape[0])

    def expire(self, now: int) -> int:
        """Rows Redis expired (TTL) since the last call, counted (:meth:`RowStore.sweep`).

        Expiry is Redis' own: a row not written for ``store.ttl_s`` (wall clock) is gone from
        Redis; the cache keeps rows until they are evicted. ``now`` (event time) is
        validated and otherwise unused.
        """
        if isinstance(now, bool) or not isinstance(now, int | np.integer) or now < 0:
            raise InputError(f"RedisTable {self.name!r}.expire: now must be an int of "
                             f"event-time seconds >= 0, got {now!r}")
        return int(self._retrying("sweep", self.rows_store.sweep))

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | Any) -> None:
        """:meth:`EmbeddingTable.save` of the cache, plus the flush position."""
        super().save(path)
        atomic_write_bytes(Path(path) / STORE_STATE, json.dumps(
            {"flushed_version": self.flushed_version,
             "counters": self.store_counters}).encode())
        if self._rules.min_events:
            buf = io.BytesIO()
            np.save(buf, np.array(list(self._events.items()), np.uint64).reshape(-1, 2))
            atomic_write_bytes(Path(path) / EVENTS, buf.getvalue())

    def load(self, path: str | Any) -> None:
        """Load the cache and flush position, then write to Redis every row changed since
        that position (a flush the crash interrupted): Redis then holds the checkpoint's
        rows."""
        super().load(path)
        state_file = Path(path) / STORE_STATE
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        self.flushed_version = int(state.get("flushed_version", 0))
        self.store_counters.update({k: int(v) for k, v in state.get("counters", {}).items()
                                    if k in self.store_counters})
        events = Path(path) / EVENTS
        if events.is_file():
            pairs = np.load(events, allow_pickle=False)
            self._events = {int(f): int(c) for f, c in pairs.tolist()}
        n = self.flush()
        log.info("store table=%s: restored flush position, rewrote %d rows", self.name, n)

    def stats(self) -> TableStats:
        """:meth:`EmbeddingTable.stats` of the cache, with ``expired`` the rows Redis expired
        (counted by :meth:`expire`) rather than the rows evicted from the cache."""
        return dataclasses.replace(super().stats(), expired=self.rows_store.expired)

    def close(self) -> None:
        """Close the Redis client (when this table opened it)."""
        if self._owns_client:
            self._client.close()

    def store_stats(self) -> dict[str, int]:
        """The cache's counters and the Redis client's (``read``, ``found``, ``bad``, ...)."""
        return {**self.store_counters, **self.rows_store.stats(), "cached": len(self)}
