"""A subscriber following a 2-rank run sees one model: the union of the shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from freshrec.sync import Registry, Subscriber
from tests.dist.ranks import merged, run_ranks, table_state


def test_subscriber_equals_union_of_shards(tmp_path: Path) -> None:
    run_ranks(2, "publish", tmp_path)
    registry = Registry(tmp_path / "registry")
    assert len(registry.versions()) > 3  # a full snapshot, deltas, the dense part
    state = Subscriber(registry).materialize()
    served = table_state(state.tables)
    parts = [dict(np.load(tmp_path / f"publish-rank{r}.npz")) for r in range(2)]
    for name in ("user", "item"):
        shards = merged(parts, name)
        assert shards["fids"].shape[0] > 0
        np.testing.assert_array_equal(served[f"{name}.fids"], shards["fids"])
        np.testing.assert_array_equal(served[f"{name}.values"], shards["values"])
    for k, v in state.dense.items():
        np.testing.assert_array_equal(v.numpy(), parts[0][f"dense.{k}"])
