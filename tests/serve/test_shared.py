"""SharedTable: reads equal the EmbeddingTable's; deltas in place; a reader sees writes."""

from __future__ import annotations

import numpy as np

from freshrec.serve.shared import SharedTable
from freshrec.table import EmbeddingTable, TableConfig


def _table(n: int, seed: int = 0) -> EmbeddingTable:
    t = EmbeddingTable(TableConfig(name="item", dim=4))
    t.lookup(np.arange(1, n + 1, dtype=np.uint64), now=1, train=True)
    return t


def _shared(t: EmbeddingTable, **kw: object) -> SharedTable:
    rows = t.read_rows(with_state=False)
    return SharedTable.create(t.name, rows.fids, rows.values, t.lookup([10**12])[0], **kw)  # type: ignore[arg-type]


def test_find_and_pool_equal_the_tables():
    t = _table(500)
    s = _shared(t)
    try:
        fids = np.array([3, 10**12, 77, 499, 600, 1], np.uint64)
        offsets = np.array([0, 2, 2, 6], np.int64)
        scale = np.array([1.0, 1.0, 0.25], np.float32)
        np.testing.assert_array_equal(s.find(fids) >= 0, t.find(fids) >= 0)
        np.testing.assert_array_equal(s.pool(s.find(fids), offsets, scale),
                                      t.pool(t.find(fids), offsets, scale))
    finally:
        s.close()
        s.unlink()


def test_a_delta_is_written_in_place_and_seen_by_an_attached_reader():
    t = _table(100)
    s = _shared(t, min_spare=10, headroom=0.0)
    reader = SharedTable.attach(s.segment, "item")
    try:
        epoch = reader.epoch
        new = np.array([5, 1000, 1001], np.uint64)  # one update, two new fids
        vals = np.arange(12, dtype=np.float32).reshape(3, 4)
        assert s.apply_delta(new, vals, np.array([7], np.uint64))
        assert reader.epoch > epoch  # a find + pool across the write is redone
        rows = reader.find(np.array([5, 1000, 1001, 7], np.uint64))
        assert rows[3] == -1 and (rows[:3] >= 0).all()
        got = reader.pool(rows, np.arange(5, dtype=np.int64), np.ones(4, np.float32))
        np.testing.assert_array_equal(got[:3], vals)
        assert len(reader) == 102
        # no spare rows for 20 more new fids: refused, nothing written
        many = np.arange(5000, 5020, dtype=np.uint64)
        assert not s.apply_delta(many, np.ones((20, 4), np.float32), np.empty(0, np.uint64))
        assert (reader.find(many) == -1).all() and len(reader) == 102
    finally:
        reader.close()
        s.close()
        s.unlink()
