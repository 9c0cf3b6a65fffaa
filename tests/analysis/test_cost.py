from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from freshrec.analysis.cost import feature_costs
from freshrec.config import config_from_dict
from freshrec.errors import InputError
from freshrec.train.trainer import Trainer


def _trainer_and_data():
    """Slot a (10 ids, table small), slot b (multi-valued, 0..6 of 200 ids, table big),
    slot c on big too (50 ids in its own id space: rows apart from b's)."""
    cfg = config_from_dict({
        "features": {
            "tables": {"small": {"dim": 8}, "big": {"dim": 8}},
            "slots": {"a": {"table": "small"}, "b": {"table": "big", "kind": "multi"},
                      "c": {"table": "big"}},
            "dense": {"x": {"norm": "none"}}, "labels": ["click"]},
        "model": {"kind": "wide_deep", "mlp": [8]}, "train": {"batch_size": 100}},
        where="test")
    rng = np.random.default_rng(0)
    n = 1000
    lengths = rng.integers(0, 7, n)
    rb = pa.RecordBatch.from_pydict({
        "a": rng.integers(0, 10, n), "b": [rng.integers(0, 200, k).tolist() for k in lengths],
        "c": rng.integers(0, 50, n), "x": rng.normal(0, 1, n).astype(np.float32),
        "click": rng.integers(0, 2, n).astype(np.float32), "event_time": np.arange(n)})
    trainer = Trainer(cfg)
    trainer.fit([rb])
    return trainer, rb, lengths


def test_costs_are_measured_from_the_tables_and_the_data():
    trainer, rb, lengths = _trainer_and_data()
    costs = feature_costs(trainer, [rb])
    per_row = {n: t.stats().bytes_used / t.stats().capacity for n, t in trainer.tables.items()}
    distinct_b = len({i for ids in rb.column("b").to_pylist() for i in ids})
    assert costs["a"].memory_bytes == round(10 * per_row["small"])
    assert costs["b"].memory_bytes == round(distinct_b * per_row["big"])
    assert costs["c"].memory_bytes == round(50 * per_row["big"])
    assert len(trainer.tables["big"]) == distinct_b + 50   # the rows of b and c add up
    assert costs["b"].length == pytest.approx(lengths.mean())
    assert costs["a"].length == costs["c"].length == 1.0
    assert all(costs[s].lookup_us > 0 for s in "abc")
    assert (costs["x"].kind, costs["x"].memory_bytes, costs["x"].lookup_us) == ("dense", 0, 0.0)


def test_costs_need_data():
    trainer, _, _ = _trainer_and_data()
    with pytest.raises(InputError, match="no examples"):
        feature_costs(trainer, [])
