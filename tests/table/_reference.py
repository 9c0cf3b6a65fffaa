"""Plain-Python reference models and helpers shared by the table tests.

``DictTable`` is what an :class:`~freshrec.table.EmbeddingTable` with SGD should be: a dict
from fid to (row, last_seen), an exact occurrence counter for admission, expiry by TTL.
Rows start as the table's deterministic initial row, read through a fresh table.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable

import numpy as np

from freshrec.table import AdmissionConfig, EmbeddingTable, OptimizerKind, TableConfig

ADVERSARIAL_FIDS = [
    0, 1, 2, 3, 2**63, 2**63 - 1, 2**63 + 1, 2**64 - 1, 2**64 - 2, 2**32, 2**32 - 1,
    *(k << 40 for k in range(1, 9)), *(k << 56 for k in range(1, 5)),
]


def u64(fids: Iterable[int]) -> np.ndarray:
    """A uint64 array of ``fids``."""
    return np.array(list(fids), dtype=np.uint64)


def initial_rows(config: TableConfig, fids: Iterable[int]) -> np.ndarray:
    """The initial rows the table gives ``fids``, read through a fresh, admit-all table."""
    fresh = EmbeddingTable(dataclasses.replace(config, admission=AdmissionConfig()))
    return fresh.lookup(u64(fids), now=0, train=True)


def dump(table: EmbeddingTable) -> dict[int, tuple[np.ndarray, int]]:
    """Every live row of ``table`` as ``{fid: (row, last_seen)}`` (read-only)."""
    r = table.read_rows(with_state=False)
    return {int(f): (r.values[i], int(r.last_seen[i])) for i, f in enumerate(r.fids)}


def dump_states(table: EmbeddingTable) -> dict[int, np.ndarray]:
    """Every live row's optimizer state as ``{fid: state}`` (read-only)."""
    r = table.read_rows()
    assert r.states is not None
    return {int(f): r.states[i] for i, f in enumerate(r.fids)}


class DictTable:
    """Reference model of an SGD table: a dict, an exact counter, a TTL.

    Admission: a fid counts occurrences only while it has no row (as the table's sketch does);
    it is admitted in the training batch that brings its count to ``min_count``, and every
    occurrence in that batch reads the new row.
    """

    def __init__(self, config: TableConfig) -> None:
        assert OptimizerKind(config.optimizer.kind) is OptimizerKind.SGD
        assert config.admission.probability == 1.0
        self.config = config
        self.rows: dict[int, np.ndarray] = {}
        self.last_seen: dict[int, int] = {}
        self.counts: Counter[int] = Counter()
        self.default = np.zeros(config.dim, np.float32)
        self._init_cache: dict[int, np.ndarray] = {}

    def _initial(self, fid: int) -> np.ndarray:
        if fid not in self._init_cache:
            self._init_cache[fid] = initial_rows(self.config, [fid])[0]
        return self._init_cache[fid].copy()

    def lookup(self, fids: list[int], now: int | None = None, train: bool = False) -> np.ndarray:
        if train:
            assert now is not None
            batch = Counter(f for f in fids if f not in self.rows)
            for fid, n in batch.items():
                self.counts[fid] += n
                if self.counts[fid] >= self.config.admission.min_count:
                    self.rows[fid] = self._initial(fid)
            for fid in fids:
                if fid in self.rows:
                    self.last_seen[fid] = now
        out = np.empty((len(fids), self.config.dim), np.float32)
        for i, fid in enumerate(fids):
            out[i] = self.rows.get(fid, self.default)
        return out

    def apply_gradients(self, fids: list[int], grads: np.ndarray) -> int:
        summed: dict[int, np.ndarray] = {}
        for fid, g in zip(fids, grads, strict=True):
            if fid in self.rows:
                summed[fid] = summed[fid] + g if fid in summed else g.astype(np.float32)
        opt = self.config.optimizer
        n = 0
        for fid, g in summed.items():
            if not np.isfinite(g).all():
                continue
            w = self.rows[fid].astype(np.float64)
            self.rows[fid] = (w - opt.lr * (g.astype(np.float64) + opt.weight_decay * w)).astype(
                np.float32)
            n += 1
        return n

    def expire(self, now: int) -> int:
        ttl = self.config.ttl_s
        if ttl is None:
            return 0
        stale = [f for f, t in self.last_seen.items() if t < now - ttl]
        for fid in stale:
            del self.rows[fid], self.last_seen[fid]
        return len(stale)


def assert_same_state(table: EmbeddingTable, model: DictTable, *, exact: bool = False) -> None:
    """``table`` holds exactly ``model``'s fids, rows (to float32 rounding) and last_seen."""
    got = dump(table)
    assert set(got) == set(model.rows), (
        f"only in table: {sorted(set(got) - set(model.rows))[:5]}, "
        f"only in model: {sorted(set(model.rows) - set(got))[:5]}"
    )
    assert len(table) == len(model.rows)
    for fid, (row, seen) in got.items():
        if exact:
            np.testing.assert_array_equal(row, model.rows[fid], err_msg=f"fid {fid}")
        else:
            np.testing.assert_allclose(row, model.rows[fid], rtol=1e-6, atol=1e-7,
                                       err_msg=f"fid {fid}")
        assert seen == model.last_seen[fid], f"fid {fid}: last_seen {seen}"


def assert_tables_equal(a: EmbeddingTable, b: EmbeddingTable, *, states: bool = True) -> None:
    """Bitwise-equal contents (fids, rows, last_seen and optionally optimizer state)."""
    da, db = dump(a), dump(b)
    assert set(da) == set(db)
    for fid, (row, seen) in da.items():
        np.testing.assert_array_equal(row, db[fid][0], err_msg=f"fid {fid}")
        assert seen == db[fid][1], f"fid {fid}: last_seen {seen} != {db[fid][1]}"
    if states:
        sa, sb = dump_states(a), dump_states(b)
        for fid, s in sa.items():
            np.testing.assert_array_equal(s, sb[fid], err_msg=f"state of fid {fid}")
