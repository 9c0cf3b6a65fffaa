"""Limited embedding updates (frozen tables) and pluggable initial rows (SmartNews)."""

from __future__ import annotations

import numpy as np
import pytest

from freshrec.errors import InputError
from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig, rows_from_table


def _table(**kw) -> EmbeddingTable:
    return EmbeddingTable(TableConfig(name="user", dim=3,
                                      optimizer=OptimizerConfig(kind="sgd", lr=1.0), **kw))


def test_frozen_table_admits_but_does_not_update():
    t = _table()
    t.frozen = True
    fids = np.array([1, 2], np.uint64)
    before = t.lookup(fids, now=0, train=True).copy()
    assert len(t) == 2
    assert t.apply_gradients(fids, np.ones((2, 3), np.float32)) == 0
    rows = t.resolve(fids)
    assert t.apply_bag_gradients(rows, np.array([0, 1, 2]), np.ones(2, np.float32),
                                 np.ones((2, 3), np.float32)) == 0
    np.testing.assert_array_equal(t.lookup(fids), before)
    t.frozen = False
    assert t.apply_gradients(fids, np.ones((2, 3), np.float32)) == 2
    np.testing.assert_allclose(t.lookup(fids), before - 1.0)


def test_new_fids_take_rows_from_another_model():
    old = _table()
    old.lookup(np.array([10, 11], np.uint64), now=0, train=True)
    old.apply_gradients(np.array([10, 11], np.uint64), np.full((2, 3), 5.0, np.float32))
    new = _table()
    new.row_initializer = rows_from_table(old)
    got = new.lookup(np.array([10, 99, 11], np.uint64), now=1, train=True)
    np.testing.assert_array_equal(got[0], old.lookup([10])[0])
    np.testing.assert_array_equal(got[2], old.lookup([11])[0])
    fresh = _table().lookup(np.array([99], np.uint64), now=1, train=True)[0]
    np.testing.assert_array_equal(got[1], fresh)  # unknown to the old model: configured init


def test_row_initializer_shape_is_checked():
    t = _table()
    t.row_initializer = lambda fids: (np.zeros((len(fids), 2), np.float32),
                                      np.ones(len(fids), bool))
    with pytest.raises(InputError, match="row_initializer must return rows of shape"):
        t.lookup(np.array([1], np.uint64), now=0, train=True)
