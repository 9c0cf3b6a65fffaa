"""``PooledEmbedding.forward`` (one node, tables in parallel) against ``forward_dict``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError
from freshrec.features import JaggedBatch
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.table import EmbeddingTable, TableConfig
from tests.nn._helpers import jagged_batches, three_tables

SLOTS = {"a": ("t1", "sum"), "b": ("t2", "mean"), "c": ("t1", "mean"), "d": ("t3", "sum"),
         "e": ("t2", "sum")}  # slots of one table interleaved with others'


def _module() -> tuple[PooledEmbedding, dict[str, EmbeddingTable]]:
    return three_tables(SLOTS)


def _batches(seed: int, n: int, b: int = 32) -> list[JaggedBatch]:
    return jagged_batches(SLOTS, seed, n, b)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_parallel_forward_and_updates_match_per_slot_path(threads):
    fused, fused_tables = _module()
    plain, plain_tables = _module()
    weight = torch.randn(5, 3)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for step, batch in enumerate(_batches(threads, 6)):
            out = fused(batch, now=step)
            parts = plain.forward_dict(batch, now=step)
            ref = torch.stack([parts[s] for s in plain.slot_names], dim=1)
            torch.testing.assert_close(out, ref)
            (out * weight).sum().backward()
            (ref * weight).sum().backward()
    finally:
        torch.set_num_threads(old)
    probe = np.arange(0, 41, dtype=np.uint64)
    for name in fused_tables:
        np.testing.assert_allclose(fused_tables[name].lookup(probe),
                                   plain_tables[name].lookup(probe), rtol=1e-6, atol=1e-7)
        assert len(fused_tables[name]) == len(plain_tables[name])


def test_forward_in_eval_mode_and_without_grad_does_not_admit():
    module, tables = _module()
    module.eval()
    out = module(_batches(0, 1)[0])
    assert out.shape == (32, 5, 3)
    assert all(len(t) == 0 for t in tables.values())
    module.train()
    with torch.no_grad():
        module(_batches(0, 1)[0], now=1)
    assert all(len(t) == 0 for t in tables.values())


def test_forward_refuses_mixed_dims():
    tables = {"x": EmbeddingTable(TableConfig(name="x", dim=2)),
              "y": EmbeddingTable(TableConfig(name="y", dim=3))}
    module = PooledEmbedding(tables, {"a": SlotSpec(table="x"), "b": SlotSpec(table="y")})
    batch = JaggedBatch.from_dict({"a": [[1]], "b": [[2]]})
    with pytest.raises(ConfigError, match="different dims"):
        module(batch, now=0)
    assert module.forward_dict(batch, now=0)["b"].shape == (1, 3)
