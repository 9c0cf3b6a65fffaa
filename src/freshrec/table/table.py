"""The collisionless, expirable embedding table.

Design
------
Open addressing with linear probing over an ``int64`` slot array; a slot holds a row id and
a 32-bit tag from the fid's hash, so a probe skips other fids' slots without reading their
rows. Each row stores its full 64-bit fid, and a probe compares fids exactly, so two
distinct fids never share a row at any fill. Slots are hashed with splitmix64's finaliser, so adversarial keys
(same low bits, 0, 2**64-1) spread like random ones. The index is kept at most ``max_load``
full (entries + tombstones, default 0.7); when a batch would pass it, the index is rebuilt,
doubled if live entries alone would fill more than half of ``max_load``. Linear probing was
chosen over cuckoo hashing because a hit costs one slot read plus one key compare in the
same neighbourhood (mostly one cache line), and inserts never relocate entries, so a row id
never moves while it is referenced between a forward and a backward pass.

Rows live in three arrays that grow by 1.5x: ``emb`` (float32 rows), ``state`` (optimizer
state) and ``meta``, one 16-byte record per row holding the fid, the version of its last
write and its last-seen time (``_keys``, ``_touched`` and ``_last_seen`` are views of it), so
a training lookup reads and stamps one cache line per row. The arrays start on cache-line
(large ones: page) boundaries and ask for transparent huge pages
(:func:`freshrec.table.memory.aligned_zeros`). Rows freed by expiry go on a free stack and
are reused by the next inserts, so the table does not grow under churn. Per entry at dim 16
with row-wise Adagrad: 64 (row) + 4 (state) + 8 (fid) + 4 (last seen) + 4 (version) = 84
bytes plus 8 bytes per index slot (about 11-23 bytes per entry at load 0.35-0.7).

Peak memory: while growing, the old and new row arrays coexist for the time of one copy, a
transient peak of 2.5x the old row bytes (1.67x the new); an index rebuild briefly holds two
index arrays. Nothing else is ever duplicated.

Thread safety
-------------
One writer at a time (``lookup(train=True)``, ``apply_gradients``, ``expire``,
``apply_delta``, ``load``) is serialised by a writer lock; readers (``lookup`` with
``train=False``, ``find``, ``pool``) may run in other threads concurrently. Every read of the
arrays and every in-place write happens under a short mutex, and ``apply_delta`` writes in
chunks of ``chunk_rows``, so a reader waits at most one chunk and never sees a half-written
row. Growth builds the new arrays outside the mutex and swaps them in under it. The numba
kernels release the GIL.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from freshrec._io import read_bundle, write_bundle
from freshrec.errors import (
    IncompatibleFormatError,
    InputError,
    SnapshotCorruptError,
    StaleDeltaError,
)
from freshrec.table import _kernels as K
from freshrec.table.config import InitKind, OptimizerKind, TableConfig, table_config_from_dict
from freshrec.table.delta import TableDelta
from freshrec.table.memory import aligned_zeros
from freshrec.table.rows import TableRows

__all__ = ["EmbeddingTable", "TableStats", "RowInitializer", "as_fids", "rows_from_table"]

RowInitializer = Callable[[npt.NDArray[np.uint64]], tuple[np.ndarray, np.ndarray]]
"""``fn(new_fids) -> (rows, mask)``: initial rows for new fids where ``mask`` is True."""

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "freshrec.table"
SNAPSHOT_VERSION = 1
_INIT_CODE = {InitKind.ZEROS: 0, InitKind.UNIFORM: 1, InitKind.NORMAL: 2}
_MAX_NOW = 2**32 - 1


def as_fids(fids: Any, owner: str = "fids") -> npt.NDArray[np.uint64]:
    """Return ``fids`` as a contiguous 1-d uint64 array, or raise :class:`InputError`.

    Accepts numpy arrays, torch tensors and lists of non-negative integers. Signed arrays are
    checked for negative values; floats and booleans are refused.

    Examples
    --------
    >>> as_fids([3, 2**64 - 1]).dtype
    dtype('uint64')
    >>> as_fids(np.array([1.5]))
    Traceback (most recent call last):
    ...
    freshrec.errors.InputError: fids: expected a 1-d array of non-negative integer ids, got dtype float64
    """
    if hasattr(fids, "numpy") and hasattr(fids, "device"):  # torch.Tensor
        fids = fids.detach().cpu().numpy()
    arr = np.asarray(fids) if not isinstance(fids, list) else _list_to_u64(fids, owner)
    if arr.ndim != 1:
        raise InputError(f"{owner}: expected a 1-d array of ids, got shape {arr.shape}")
    if arr.dtype == np.uint64:
        return np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.empty(0, np.uint64)
    if arr.dtype.kind == "u":
        return arr.astype(np.uint64)
    if arr.dtype.kind == "i":
        if arr.min() < 0:
            bad = int(np.flatnonzero(arr < 0)[0])
            raise InputError(
                f"{owner}: ids must be non-negative, got {int(arr[bad])} at position {bad}"
            )
        return arr.astype(np.uint64)
    raise InputError(
        f"{owner}: expected a 1-d array of non-negative integer ids, got dtype {arr.dtype}"
    )


def _list_to_u64(values: list[Any], owner: str) -> npt.NDArray[np.uint64]:
    for i, v in enumerate(values):
        if not isinstance(v, int | np.integer) or isinstance(v, bool) or not 0 <= v < 2**64:
            raise InputError(f"{owner}: expected non-negative integer ids, got {v!r} at {i}")
    return np.array(values, dtype=np.uint64)


def _check_now(now: Any, owner: str) -> np.uint32:
    if isinstance(now, bool) or not isinstance(now, int | np.integer) or not 0 <= now <= _MAX_NOW:
        raise InputError(f"{owner}: now must be an int of event-time seconds in [0, 2**32), "
                         f"got {now!r}")
    return np.uint32(now)


def rows_from_table(source: EmbeddingTable) -> RowInitializer:
    """A :data:`RowInitializer` giving new fids the rows they have in ``source``.

    SmartNews initialises new users' embeddings from another model; load that model's table
    (``EmbeddingTable.from_snapshot(path)``) and pass it here. Fids unknown to ``source``
    keep the configured initializer.

    Examples
    --------
    >>> from freshrec.table import TableConfig
    >>> old = EmbeddingTable(TableConfig(name="user", dim=2))
    >>> _ = old.lookup(np.array([1], np.uint64), now=0, train=True)
    >>> new = EmbeddingTable(TableConfig(name="user", dim=2))
    >>> new.row_initializer = rows_from_table(old)
    >>> bool((new.lookup([1, 2], now=5, train=True)[0] == old.lookup([1])[0]).all())
    True
    """

    def init(fids: npt.NDArray[np.uint64]) -> tuple[np.ndarray, np.ndarray]:
        return source.lookup(fids), source.find(fids) >= 0

    return init


@dataclass(frozen=True)
class TableStats:
    """A snapshot of a table's counters.

    ``rejected`` counts training lookups of fids not (yet) admitted; ``nonfinite`` counts
    gradient rows refused for NaN/inf.
    """

    name: str
    entries: int
    capacity: int
    index_slots: int
    tombstones: int
    bytes_used: int
    load_factor: float
    admitted: int
    rejected: int
    expired: int
    nonfinite: int
    version: int

    @property
    def bytes_per_entry(self) -> float:
        """Allocated bytes divided by live entries."""
        return self.bytes_used / max(self.entries, 1)


def _next_pow2(n: int) -> int:
    p = 16
    while p < n:
        p *= 2
    return p


class EmbeddingTable:
    """A hash table from 64-bit fids to float32 rows with row-wise optimizer state.

    Parameters
    ----------
    config : TableConfig
        Dim, initializer, optimizer, admission and TTL.
    huge_pages : bool
        Ask for transparent huge pages for the row and index arrays (see
        :mod:`freshrec.table.memory`).

    Examples
    --------
    >>> from freshrec.table import EmbeddingTable, TableConfig
    >>> t = EmbeddingTable(TableConfig(name="user", dim=4))
    >>> rows = t.lookup(np.array([7, 9, 7], np.uint64), now=100, train=True)
    >>> rows.shape, len(t)
    ((3, 4), 2)
    >>> bool((rows[0] == rows[2]).all())
    True
    >>> t.apply_gradients(np.array([7], np.uint64), np.ones((1, 4), np.float32), now=100)
    1
    >>> t.lookup(np.array([12345], np.uint64)).tolist()   # unknown fid: the default row
    [[0.0, 0.0, 0.0, 0.0]]
    """

    def __init__(self, config: TableConfig, *, huge_pages: bool = True) -> None:
        self.config = config
        self._huge_pages = huge_pages
        self._mutex = threading.Lock()
        self._writer = threading.RLock()
        self._alloc(config.capacity_hint)
        self._default = np.zeros(config.dim, np.float32)
        self._version = 1
        self._applied_version = 0
        self._epoch = 0
        self._expired_log: list[tuple[int, npt.NDArray[np.uint64]]] = []
        self._counters = {"admitted": 0, "rejected": 0, "expired": 0, "nonfinite": 0}
        #: Forward-only when True: lookups (and admission) go on, gradients are dropped
        #: (SmartNews' limited embedding updates: frozen tables, or a warm-up of N steps).
        self.frozen = False
        #: Optional ``fn(new_fids) -> (rows (n, dim) float32, mask (n,) bool)`` called for
        #: fids getting a row; rows where ``mask`` replace the configured initializer's
        #: (e.g. rows from another model: :func:`freshrec.table.rows_from_table`).
        self.row_initializer: RowInitializer | None = None
        adm = config.admission
        self._sketch: npt.NDArray[np.uint32] | None = None
        if not adm.admits_all:
            width = _next_pow2(adm.sketch_width)
            self._sketch = np.zeros((adm.sketch_depth, width), np.uint32)

    # ------------------------------------------------------------------ storage
    def _alloc(self, rows: int) -> None:
        cfg = self.config
        rows = max(int(rows), 16)
        self._set_rows(self._zeros((rows, 2), np.uint64), self._zeros((rows, cfg.dim)),
                       self._zeros((rows, cfg.state_dim)))
        self._free = np.zeros(0, np.int32)
        self._n_free = 0
        self._n_used = 0
        self._index = self._empty_index(_next_pow2(int(rows / cfg.max_load) + 1))
        self._tombstones = 0

    def _zeros(self, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        return aligned_zeros(shape, dtype, huge_pages=self._huge_pages)

    def _empty_index(self, slots: int) -> npt.NDArray[np.int64]:
        index = self._zeros((slots,), np.int64)
        index.fill(K.EMPTY)
        return index

    def _set_rows(self, meta: np.ndarray, emb: np.ndarray, state: np.ndarray) -> None:
        """Install row arrays; ``meta`` is (rows, 2) uint64: fid, then version | last_seen."""
        self._meta, self._emb, self._state = meta, emb, state
        halves = meta.view(np.uint32)  # (rows, 4): fid low, fid high, touched, last_seen
        self._keys = meta[:, 0]
        self._touched = halves[:, 2]
        self._last_seen = halves[:, 3]

    @property
    def name(self) -> str:
        """The table's name."""
        return self.config.name

    @property
    def dim(self) -> int:
        """Row width."""
        return self.config.dim

    @property
    def version(self) -> int:
        """Version stamped on writes now; :meth:`seal_version` closes it and opens the next."""
        return self._version

    @property
    def applied_version(self) -> int:
        """Newest ``to_version`` applied from a delta or snapshot (0 if none)."""
        return self._applied_version

    @property
    def epoch(self) -> int:
        """Incremented whenever rows are removed, so cached row ids can be re-validated."""
        return self._epoch

    def __len__(self) -> int:
        return self._n_used - self._n_free

    def __repr__(self) -> str:
        return f"EmbeddingTable(name={self.name!r}, dim={self.dim}, entries={len(self)})"

    def _reserve(self, extra: int) -> None:
        """Make room for ``extra`` new rows (writer lock held): grow rows and/or rebuild index."""
        entries = len(self)
        need_rows = self._n_used + max(0, extra - self._n_free)
        if need_rows > self._keys.shape[0]:
            new_cap = max(need_rows, int(self._keys.shape[0] * 1.5) + 16)
            grown = []
            for old in (self._meta, self._emb, self._state):
                new = self._zeros((new_cap, *old.shape[1:]), old.dtype)
                new[: self._n_used] = old[: self._n_used]
                grown.append(new)
            with self._mutex:
                self._set_rows(*grown)
            log.debug("table=%s grew rows=%d", self.name, new_cap)
        slots = self._index.shape[0]
        max_fill = self.config.max_load * slots
        if entries + self._tombstones + extra > max_fill:
            new_slots = slots
            while entries + extra > 0.5 * self.config.max_load * new_slots:
                new_slots *= 2
            index = self._empty_index(new_slots)
            K.build_index(self._keys, self._touched, self._n_used, index)
            with self._mutex:
                self._index = index
                self._tombstones = 0
            log.debug("table=%s rebuilt index slots=%d", self.name, new_slots)

    # ------------------------------------------------------------------ reads
    def find(self, fids: Any) -> npt.NDArray[np.int32]:
        """Row id of each fid, -1 where absent. Never inserts.

        >>> t = EmbeddingTable(TableConfig(name="t", dim=2))
        >>> t.find([1, 2]).tolist()
        [-1, -1]
        """
        f = as_fids(fids, f"EmbeddingTable {self.name!r}: fids")
        out = np.empty(f.shape[0], np.int32)
        with self._mutex:
            K.find_rows(self._index, self._keys, f, out)
        return out

    def read_rows(self, fids: Any = None, *, with_state: bool = True) -> TableRows:
        """A copy of live rows with their state, last-seen time and version; changes nothing.

        Parameters
        ----------
        fids : array-like of uint64, optional
            The rows to read, in this order; None reads every live row, sorted by fid.
        with_state : bool
            Include the optimizer state.

        Returns
        -------
        TableRows

        Raises
        ------
        InputError
            A fid in ``fids`` has no row.

        Examples
        --------
        >>> t = EmbeddingTable(TableConfig(name="user", dim=2))
        >>> _ = t.lookup(np.array([7], np.uint64), now=5, train=True)
        >>> t.read_rows([7]).last_seen.tolist()
        [5]
        >>> t.read_rows([7, 8])
        Traceback (most recent call last):
        ...
        freshrec.errors.InputError: EmbeddingTable 'user'.read_rows: every fid must have a row; 1 of 2 have none (the first: 8)
        """
        owner = f"EmbeddingTable {self.name!r}.read_rows"
        with self._writer:
            if fids is None:
                live = np.flatnonzero(self._touched[: self._n_used] != 0).astype(np.int32)
                rows = live[np.argsort(self._keys[live], kind="stable")]
            else:
                f = as_fids(fids, f"{owner}: fids")
                rows = self.find(f)
                absent = f[rows < 0]
                if absent.shape[0]:
                    raise InputError(f"{owner}: every fid must have a row; {absent.shape[0]} "
                                     f"of {f.shape[0]} have none (the first: {int(absent[0])})")
            keys, values, seen, versions, states = self._gather(rows, with_state)
        return TableRows(fids=keys, values=values, states=states, last_seen=seen,
                         versions=versions)

    def _gather(self, rows: np.ndarray, with_state: bool) -> tuple[
            npt.NDArray[np.uint64], npt.NDArray[np.float32], npt.NDArray[np.uint32],
            npt.NDArray[np.uint32], npt.NDArray[np.float32] | None]:
        """Copies of ``(fids, values, last_seen, versions, states)`` of ``rows``."""
        with self._mutex:
            return (self._keys[rows], self._emb[rows], self._last_seen[rows],
                    self._touched[rows], self._state[rows] if with_state else None)

    def set_default_row(self, row: Any) -> None:
        """Set the row read for absent fids (zeros unless set), e.g. the mean of known rows."""
        arr = np.asarray(row, dtype=np.float32)
        if arr.shape != (self.dim,):
            raise InputError(
                f"EmbeddingTable {self.name!r}: default row must have shape ({self.dim},), "
                f"got {arr.shape}"
            )
        self._default = arr.copy()

    def lookup(self, fids: Any, *, now: int | None = None, train: bool = False) -> np.ndarray:
        """Rows for ``fids`` (n x dim float32, a copy).

        Parameters
        ----------
        fids : array of uint64 (or non-negative ints)
        now : int
            Event time in seconds; required when ``train``.
        train : bool
            Count occurrences, admit new fids and stamp ``last_seen``. Otherwise a pure read.
        """
        if train:
            rows = self.resolve(fids, now=now, train=True)
            out = np.empty((rows.shape[0], self.dim), np.float32)
            with self._mutex:
                K.gather(self._emb, rows, self._default, out)
            return out
        f = as_fids(fids, f"EmbeddingTable {self.name!r}: fids")
        out = np.empty((f.shape[0], self.dim), np.float32)
        with self._mutex:
            K.lookup_copy(self._index, self._keys, self._emb, f, self._default, out)
        return out

    def resolve(self, fids: Any, *, now: int | None = None, train: bool = False) -> np.ndarray:
        """Row ids for ``fids``; with ``train``, admit new fids and stamp ``last_seen``.

        Returns int32 row ids, -1 for fids without a row (not admitted, or not training).
        Row ids stay valid until :attr:`epoch` changes.
        """
        f = as_fids(fids, f"EmbeddingTable {self.name!r}: fids")
        if not train:
            return self.find(f)
        t = _check_now(now, f"EmbeddingTable {self.name!r}.lookup(train=True)")
        if self._sketch is None and self.row_initializer is None:
            return self._resolve_admit_all(f, t)[0]
        with self._writer:
            rows = np.empty(f.shape[0], np.int32)
            with self._mutex:
                missing = K.find_rows(self._index, self._keys, f, rows)
            if missing:
                self._admit(f, rows, t)
            with self._mutex:
                K.touch_last_seen(self._last_seen, self._touched, rows, t,
                                  np.uint32(self._version))
        return rows

    def resolve_unique(self, fids: Any, *, now: int) -> tuple[
            np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """``resolve(fids, now=now, train=True)`` and :meth:`unique_rows` of its result.

        For a table admitting every fid both come out of one pass that probes the table once
        per distinct fid (the batch is deduplicated first, in cache); otherwise, and in
        subclasses that override :meth:`resolve`, it is exactly those two calls.

        >>> t = EmbeddingTable(TableConfig(name="t", dim=2))
        >>> rows, (urows, inverse) = t.resolve_unique([5, 9, 5], now=0)
        >>> rows.tolist(), urows.tolist(), inverse.tolist()
        ([0, 1, 0], [0, 1], [0, 1, 0])
        """
        if (type(self).resolve is not EmbeddingTable.resolve or self._sketch is not None
                or self.row_initializer is not None):
            rows = self.resolve(fids, now=now, train=True)
            return rows, self.unique_rows(rows)
        f = as_fids(fids, f"EmbeddingTable {self.name!r}: fids")
        t = _check_now(now, f"EmbeddingTable {self.name!r}.lookup(train=True)")
        rows, urows, inverse = self._resolve_admit_all(f, t)
        return rows, (urows, inverse)

    def _resolve_admit_all(self, f: np.ndarray, now: np.uint32) -> tuple[
            np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`resolve` with ``train`` for a table admitting every fid: one probe per
        distinct fid. Returns ``(rows, unique rows, inverse)`` (see :meth:`unique_rows`).

        Same result as find + insert of the distinct new fids + stamping ``last_seen``: the
        batch is deduplicated in order of first appearance
        (:func:`~freshrec.table._kernels.unique_fids`), and each distinct fid is found or
        inserted (:func:`~freshrec.table._kernels.find_or_insert`), so new rows are numbered
        in order of first appearance. When rows or index slots run out the kernel stops,
        room is made for the distinct absent fids left, and it goes on from there. Distinct
        fids have distinct rows, so the rows of the distinct fids are the distinct rows.
        """
        ufids, inverse = K.unique_fids(f)
        urows = self._find_or_insert(ufids, now)
        return urows[inverse], urows, inverse

    def _find_or_insert(self, f: np.ndarray, now: np.uint32) -> np.ndarray:
        """Rows of the fids ``f``, inserting the absent ones (admit-all tables)."""
        cfg = self.config
        init = cfg.initializer
        kind = _INIT_CODE[InitKind(init.kind)]
        state_value = self._initial_state_value()
        rows = np.empty(f.shape[0], np.int32)
        pos = 0
        with self._writer:
            v = np.uint32(self._version)
            while True:
                budget = int(cfg.max_load * self._index.shape[0]) - len(self) - self._tombstones
                with self._mutex:
                    pos, self._n_free, self._n_used, reused, added = K.find_or_insert(
                        self._index, self._keys, self._emb, self._state, self._touched,
                        self._last_seen, self._free, self._n_free, self._n_used, f, pos, v,
                        now, kind, float(init.scale), float(init.std), np.uint64(init.seed),
                        state_value, budget, rows,
                    )
                self._tombstones -= reused
                self._counters["admitted"] += added
                if pos == f.shape[0]:
                    return rows
                with self._mutex:
                    absent = K.count_absent(self._index, self._keys, f[pos:])
                self._reserve(int(absent))

    def _admit(self, f: np.ndarray, rows: np.ndarray, now: np.uint32) -> None:
        miss = rows < 0
        cand = f[miss]
        adm = self.config.admission
        if self._sketch is not None:
            ok = np.empty(cand.shape[0], np.bool_)
            K.sketch_admit(self._sketch, cand, np.uint64(adm.seed), adm.min_count,
                           float(adm.probability), ok)
            new = np.unique(cand[ok])
        else:
            new = np.unique(cand)
        if new.shape[0]:
            self._insert(new, now)
            with self._mutex:
                sub = np.empty(cand.shape[0], np.int32)
                K.find_rows(self._index, self._keys, cand, sub)
            rows[miss] = sub
        self._counters["admitted"] += int(new.shape[0])
        self._counters["rejected"] += int((rows < 0).sum())

    def _insert(self, new: np.ndarray, now: np.uint32) -> np.ndarray:
        """Insert distinct absent fids with initial rows (writer lock held); returns rows."""
        cfg = self.config
        self._reserve(new.shape[0])
        out = np.empty(new.shape[0], np.int32)
        with self._mutex:
            self._n_free, self._n_used, reused = K.insert_new(
                self._index, self._keys, self._touched, self._last_seen, self._free,
                self._n_free, self._n_used, new, np.uint32(self._version), now, out,
            )
            self._tombstones -= reused
            init = cfg.initializer
            K.init_rows(self._emb, out, new, _INIT_CODE[InitKind(init.kind)], float(init.scale),
                        float(init.std), np.uint64(init.seed))
            if self._state.shape[1]:
                K.fill_state(self._state, out, self._initial_state_value())
        if self.row_initializer is not None:
            values, mask = self.row_initializer(new)
            values = np.asarray(values, np.float32)
            mask = np.asarray(mask, bool)
            if values.shape != (new.shape[0], self.dim) or mask.shape != (new.shape[0],):
                raise InputError(
                    f"EmbeddingTable {self.name!r}: row_initializer must return rows of shape "
                    f"({new.shape[0]}, {self.dim}) and a mask of shape ({new.shape[0]},), got "
                    f"{values.shape} and {mask.shape}")
            with self._mutex:
                self._emb[out[mask]] = values[mask]
        return out

    def _initial_state_value(self) -> float:
        opt = self.config.optimizer
        if OptimizerKind(opt.kind) in (OptimizerKind.ADAGRAD, OptimizerKind.ROWWISE_ADAGRAD):
            return float(opt.initial_accumulator)
        return 0.0

    def pool(self, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray,
             out: np.ndarray | None = None) -> np.ndarray:
        """Pooled bags: ``out[b] = scale[b] * sum(emb[rows[k]] for k in bag b)``.

        ``rows`` come from :meth:`resolve`; absent rows read as the default row. ``out``, if
        given, is a (bags, dim) float32 array, possibly a strided view, written in place.
        """
        shape = (offsets.shape[0] - 1, self.dim)
        if out is None:
            out = np.empty(shape, np.float32)
        elif out.shape != shape or out.dtype != np.float32:
            raise InputError(f"EmbeddingTable {self.name!r}.pool: out must be float32 of shape "
                             f"{shape}, got {out.dtype} {out.shape}")
        with self._mutex:
            K.pool(self._emb, rows, offsets, scale, self._default, out)
        return out

    # ------------------------------------------------------------------ writes
    def apply_gradients(self, fids: Any, grads: Any, *, now: int | None = None) -> int:
        """One optimizer step per distinct present fid; duplicate fids' gradients are summed.

        Absent (unadmitted) fids get no update. Rows with a NaN/inf gradient are refused
        and counted in ``stats().nonfinite``. Returns the number of rows updated.
        ``now`` is accepted for symmetry with :meth:`lookup` and validated when given.
        """
        owner = f"EmbeddingTable {self.name!r}.apply_gradients"
        f = as_fids(fids, f"{owner}: fids")
        if now is not None:
            _check_now(now, owner)
        if hasattr(grads, "detach"):
            grads = grads.detach().cpu().numpy()
        g = np.asarray(grads)
        if g.dtype.kind != "f":
            raise InputError(f"{owner}: grads must be a float array, got dtype {g.dtype}")
        if g.shape != (f.shape[0], self.dim):
            raise InputError(
                f"{owner}: grads must have shape ({f.shape[0]}, {self.dim}), got {g.shape}"
            )
        if self.frozen:
            return 0
        with self._writer:
            rows = self.find(f)
            urows, ugrads = K.sum_by_row(rows, np.ascontiguousarray(g, dtype=np.float32))
            return self._step(urows, ugrads)

    def apply_bag_gradients(
        self, rows: np.ndarray, offsets: np.ndarray, scale: np.ndarray, grad_out: np.ndarray,
        unique: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> int:
        """Backward of :meth:`pool`: route bag gradients to rows and take one step per row.

        Used by :class:`freshrec.nn.PooledEmbedding`; ``rows`` must be current (same
        :attr:`epoch` as when they were resolved). ``unique``, when given, is
        :meth:`unique_rows` of ``rows``, computed ahead (e.g. while prefetching).
        """
        if self.frozen:
            return 0
        with self._writer:
            urows, inverse = self.unique_rows(rows) if unique is None else unique
            ugrads = K.sum_bag_grads(inverse, urows.shape[0], offsets, scale, grad_out)
            return self._step(urows, ugrads)

    @staticmethod
    def unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct rows (>= 0, in order of first appearance) and each entry's index among
        them (-1 for rows < 0): the ``unique`` argument of :meth:`apply_bag_gradients`.

        >>> urows, inverse = EmbeddingTable.unique_rows(np.array([4, -1, 2, 4], np.int32))
        >>> urows.tolist(), inverse.tolist()
        ([4, 2], [0, -1, 1, 0])
        """
        return K.unique_rows(np.ascontiguousarray(rows, dtype=np.int32))

    def _step(self, rows: np.ndarray, grads: np.ndarray) -> int:
        opt = self.config.optimizer
        kind = OptimizerKind(opt.kind)
        v = np.uint32(self._version)
        with self._mutex:
            if kind is OptimizerKind.SGD:
                bad = K.step_sgd(self._emb, self._touched, rows, grads, v, opt.lr,
                                 opt.weight_decay)
            elif kind is OptimizerKind.ADAGRAD:
                bad = K.step_adagrad(self._emb, self._state, self._touched, rows, grads, v,
                                     opt.lr, opt.eps, opt.weight_decay)
            elif kind is OptimizerKind.ROWWISE_ADAGRAD:
                bad = K.step_rowwise_adagrad(self._emb, self._state, self._touched, rows, grads,
                                             v, opt.lr, opt.eps, opt.weight_decay)
            elif kind is OptimizerKind.ADAM:
                bad = K.step_adam(self._emb, self._state, self._touched, rows, grads, v, opt.lr,
                                  opt.beta1, opt.beta2, opt.eps, opt.weight_decay)
            else:
                bad = K.step_ftrl(self._emb, self._state, self._touched, rows, grads, v, opt.lr,
                                  opt.beta, opt.l1, opt.l2)
        self._counters["nonfinite"] += int(bad)
        return int(rows.shape[0] - bad)

    def expire(self, now: int) -> int:
        """Remove rows whose last training lookup is older than ``ttl_s``; returns the count.

        Their rows are reused by later inserts. A table without ``ttl_s`` never expires.
        """
        t = int(_check_now(now, f"EmbeddingTable {self.name!r}.expire"))
        if self.config.ttl_s is None:
            return 0
        cutoff = t - self.config.ttl_s
        with self._writer:
            n = self._n_used
            live = self._touched[:n] != 0
            stale = np.flatnonzero(live & (self._last_seen[:n].astype(np.int64) < cutoff))
            if stale.shape[0]:
                self._remove(stale.astype(np.int32))
            return int(stale.shape[0])

    def _remove(self, rows: np.ndarray) -> None:
        """Delete live rows (writer lock held) and log their fids for the next delta."""
        fids = self._keys[rows].copy()
        if self._free.shape[0] < self._n_free + rows.shape[0]:
            free = np.zeros(self._n_free + rows.shape[0] + 1024, np.int32)
            free[: self._n_free] = self._free[: self._n_free]
            self._free = free
        with self._mutex:
            self._n_free = K.remove_rows(self._index, self._keys, self._touched, self._free,
                                         self._n_free, rows)
            self._tombstones += rows.shape[0]
            self._epoch += 1
        self._expired_log.append((self._version, fids))
        self._counters["expired"] += int(rows.shape[0])

    # ------------------------------------------------------------------ deltas
    def read_delta(self, since_version: int = 0, *, with_state: bool = True) -> TableDelta:
        """Rows written and fids expired after ``since_version``, up to the open version.

        Reads only: the open version stays open, so writes after this call may still carry
        the returned ``to_version``. To cut a delta that the next one continues from, use
        :meth:`export_delta`. ``read_delta(0)`` is the whole table.

        Parameters
        ----------
        since_version : int
            Rows last written in a version after this one are included.
        with_state : bool
            Include the optimizer state (training replicas); False for serving.

        Returns
        -------
        TableDelta
            From ``since_version`` to the open :attr:`version`.

        Examples
        --------
        >>> t = EmbeddingTable(TableConfig(name="user", dim=2))
        >>> _ = t.lookup(np.array([3, 5], np.uint64), now=0, train=True)
        >>> d = t.read_delta(0)
        >>> d.fids.tolist(), d.to_version, t.version
        ([3, 5], 1, 1)
        """
        with self._writer:
            rows = np.flatnonzero(self._touched[: self._n_used] > since_version).astype(np.int32)
            fids, values, seen, _, states = self._gather(rows, with_state)
            parts = [f for v, f in self._expired_log if v > since_version]
            expired = np.concatenate(parts) if parts else np.empty(0, np.uint64)
            to_version = self._version
        return TableDelta(
            table=self.name, fingerprint=self.config.fingerprint(), from_version=since_version,
            to_version=to_version, fids=fids, values=values, last_seen=seen, states=states,
            expired=expired,
        )

    def seal_version(self) -> int:
        """Close the open version and open the next one; returns the version closed.

        Writes after this carry the next version, so a delta since the closed version holds
        exactly them.

        Examples
        --------
        >>> t = EmbeddingTable(TableConfig(name="user", dim=2))
        >>> t.seal_version(), t.version
        (1, 2)
        """
        with self._writer:
            sealed = self._version
            self._version += 1
        return sealed

    def export_delta(self, since_version: int = 0, *, with_state: bool = True) -> TableDelta:
        """:meth:`read_delta`, then :meth:`seal_version`, with no write in between.

        The returned delta's ``to_version`` is the version that was open; later writes carry
        the next one, so ``export_delta(d.to_version)`` continues where ``d`` ended. This is
        what publishing uses; to look at a table without changing it, use :meth:`read_delta`
        or :meth:`read_rows`.

        Examples
        --------
        >>> t = EmbeddingTable(TableConfig(name="user", dim=2))
        >>> _ = t.lookup(np.array([3], np.uint64), now=0, train=True)
        >>> d = t.export_delta(0)
        >>> _ = t.lookup(np.array([4], np.uint64), now=0, train=True)
        >>> d.to_version, t.export_delta(d.to_version).fids.tolist()
        (1, [4])
        """
        with self._writer:
            delta = self.read_delta(since_version, with_state=with_state)
            self.seal_version()
        return delta

    def forget_expired_before(self, version: int) -> None:
        """Drop the expired-fid log up to ``version`` (deltas since then no longer need it)."""
        with self._writer:
            self._expired_log = [(v, f) for v, f in self._expired_log if v > version]

    def apply_delta(self, delta: TableDelta, *, chunk_rows: int = 4096,
                    check_version: bool = True) -> None:
        """Make this table equal to the delta's source at ``delta.to_version``.

        Expired fids are removed, then rows are upserted in chunks of ``chunk_rows`` so that
        concurrent readers wait at most one chunk. Raises :class:`StaleDeltaError` when the
        delta starts after :attr:`applied_version` (a gap) or ends before it (old).
        """
        owner = f"EmbeddingTable {self.name!r}.apply_delta"
        if delta.fingerprint != self.config.fingerprint():
            raise IncompatibleFormatError(
                f"{owner}: delta of table {delta.table!r} has layout {delta.fingerprint}, "
                f"this table has {self.config.fingerprint()} (name, dim or optimizer differ)"
            )
        if delta.values.shape[1] != self.dim:
            raise IncompatibleFormatError(
                f"{owner}: delta rows have dim {delta.values.shape[1]}, table has {self.dim}"
            )
        if check_version and not (
            delta.from_version <= self._applied_version <= delta.to_version
        ):
            raise StaleDeltaError(
                f"{owner}: delta covers versions ({delta.from_version}, {delta.to_version}] "
                f"but this table is at {self._applied_version}"
            )
        kept_states = delta.states if delta.states is not None and \
            self._state.shape[1] == delta.states.shape[1] else None
        with_state = kept_states is not None
        with self._writer:
            if delta.expired.shape[0]:
                rows = self.find(delta.expired)
                rows = np.unique(rows[rows >= 0])
                if rows.shape[0]:
                    self._remove(rows)
            v = np.uint32(self._version)
            for start in range(0, delta.num_rows, chunk_rows):
                sl = slice(start, start + chunk_rows)
                fids = delta.fids[sl]
                rows = self.find(fids)
                miss = rows < 0
                states = (kept_states[sl] if kept_states is not None
                          else np.empty((0, 0), np.float32))
                new = np.unique(fids[miss])        # a fid twice in a delta gets one row
                if new.shape[0]:
                    self._reserve(new.shape[0])
                # Insert and write under one lock hold: readers never see a new fid with
                # the stale contents of a reused row.
                with self._mutex:
                    if new.shape[0]:
                        out = np.empty(new.shape[0], np.int32)
                        self._n_free, self._n_used, reused = K.insert_new(
                            self._index, self._keys, self._touched, self._last_seen, self._free,
                            self._n_free, self._n_used, new, v, np.uint32(0), out,
                        )
                        self._tombstones -= reused
                        if not with_state and self._state.shape[1]:
                            # A reused row must not keep a removed fid's optimizer state.
                            K.fill_state(self._state, out, self._initial_state_value())
                        K.find_rows(self._index, self._keys, fids, rows)
                    K.write_rows(self._emb, self._state, self._last_seen, self._touched, rows,
                                 delta.values[sl], states, delta.last_seen[sl], v, with_state)
            self._applied_version = delta.to_version

    # ------------------------------------------------------------------ snapshots
    def save(self, path: str | Any) -> None:
        """Write a snapshot directory (see :mod:`freshrec._io`), atomically.

        Files: ``keys.npy`` (uint64), ``values.npy`` (float32 n x dim), ``state.npy``
        (float32 n x state_dim), ``last_seen.npy`` and ``touched.npy`` (uint32),
        ``default_row.npy``, ``sketch.npy`` when admission counts, ``expired_fids.npy`` and
        ``expired_versions.npy`` (the expired-fid log of :meth:`export_delta`), and
        ``manifest.json`` with the table config, its fingerprint, versions, counters and each
        file's CRC-32.
        """
        with self._writer:
            live = np.flatnonzero(self._touched[: self._n_used] != 0)
            with self._mutex:
                arrays: dict[str, np.ndarray] = {
                    "keys": self._keys[live], "values": self._emb[live],
                    "state": self._state[live], "last_seen": self._last_seen[live],
                    "touched": self._touched[live], "default_row": self._default.copy(),
                }
                if self._sketch is not None:
                    arrays["sketch"] = self._sketch.copy()
            # The expired-fid log, so deltas exported after a reload still carry removals.
            log_fids = [f for _, f in self._expired_log]
            arrays["expired_fids"] = (np.concatenate(log_fids) if log_fids
                                      else np.empty(0, np.uint64))
            arrays["expired_versions"] = np.repeat(
                np.array([v for v, _ in self._expired_log], np.int64),
                [f.shape[0] for f in log_fids]).astype(np.int64)
            meta = {
                "table": self.config.to_dict(), "fingerprint": self.config.fingerprint(),
                "version": self._version, "applied_version": self._applied_version,
                "counters": dict(self._counters), "rows": int(live.shape[0]),
            }
        write_bundle(path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, arrays, meta)

    @classmethod
    def from_snapshot(cls, path: str | Any, config: TableConfig | None = None) -> EmbeddingTable:
        """A new table holding the snapshot at ``path``.

        ``config`` (optional) must have the snapshot's layout (name, dim, optimizer kind);
        hyper-parameters such as learning rate or TTL may differ and are taken from it.

        Raises
        ------
        SnapshotCorruptError
            A file is missing, truncated or fails its checksum (the message names it).
        IncompatibleFormatError
            Another format version, or a layout different from ``config``.
        """
        meta, arrays = read_bundle(path, SNAPSHOT_FORMAT, SNAPSHOT_VERSION)
        lacking = [k for k in ("table", "fingerprint", "rows", "version", "applied_version",
                               "counters") if k not in meta]
        if lacking:
            raise SnapshotCorruptError(f"{path}/manifest.json: missing field(s) {lacking}")
        saved = table_config_from_dict(meta["table"], where=f"{path}/manifest.json: table")
        if config is None:
            config = saved
        elif config.fingerprint() != meta["fingerprint"]:
            raise IncompatibleFormatError(
                f"{path}: snapshot of table {saved.name!r} (dim {saved.dim}, optimizer "
                f"{saved.optimizer.kind.value}) does not match table {config.name!r} (dim "
                f"{config.dim}, optimizer {config.optimizer.kind.value})"
            )
        n = int(meta["rows"])
        expect = {"keys": (n,), "values": (n, config.dim), "state": (n, config.state_dim),
                  "last_seen": (n,), "touched": (n,), "default_row": (config.dim,)}
        for key, shape in expect.items():
            if key not in arrays or arrays[key].shape != shape:
                got = arrays[key].shape if key in arrays else "missing"
                raise IncompatibleFormatError(f"{path}/{key}.npy: expected shape {shape}, got {got}")
        table = cls(config)
        table._restore(meta, arrays)
        return table

    def load(self, path: str | Any) -> None:
        """Replace this table's contents with the snapshot at ``path``.

        Everything is read and validated first; on any error the table is unchanged.
        """
        other = EmbeddingTable.from_snapshot(path, self.config)
        with self._writer, self._mutex:
            self.__dict__.update({k: v for k, v in other.__dict__.items()
                                  if k not in ("_mutex", "_writer", "config")})
            self._epoch = other._epoch + self._epoch + 1

    def _restore(self, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        n = int(meta["rows"])
        self._alloc(max(n, self.config.capacity_hint))
        self._keys[:n] = arrays["keys"]
        self._emb[:n] = arrays["values"]
        self._state[:n] = arrays["state"]
        self._last_seen[:n] = arrays["last_seen"]
        self._touched[:n] = np.maximum(arrays["touched"], 1)
        self._n_used = n
        K.build_index(self._keys, self._touched, n, self._index)
        self._default = arrays["default_row"].astype(np.float32)
        if (self._sketch is not None and "sketch" in arrays
                and arrays["sketch"].shape == self._sketch.shape):
            self._sketch = arrays["sketch"].astype(np.uint32)
        if "expired_fids" in arrays and "expired_versions" in arrays:
            efids, evers = arrays["expired_fids"], arrays["expired_versions"]
            self._expired_log = [(int(v), efids[evers == v]) for v in np.unique(evers)]
        self._version = int(meta["version"])
        self._applied_version = int(meta["applied_version"])
        self._counters.update({k: int(v) for k, v in meta["counters"].items()
                               if k in self._counters})

    # ------------------------------------------------------------------ stats
    def stats(self) -> TableStats:
        """Counters and memory of the table."""
        arrays: list[np.ndarray] = [self._index, self._meta, self._emb, self._state,
                                    self._free]
        if self._sketch is not None:
            arrays.append(self._sketch)
        entries = len(self)
        return TableStats(
            name=self.name, entries=entries, capacity=int(self._keys.shape[0]),
            index_slots=int(self._index.shape[0]), tombstones=self._tombstones,
            bytes_used=int(sum(a.nbytes for a in arrays)),
            load_factor=entries / self._index.shape[0], version=self._version,
            **self._counters,
        )
