"""ShardedPooledEmbedding: requests started ahead (prefetch) train what one process trains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from freshrec.dist import ShardedPooledEmbedding, SparseExchange
from freshrec.errors import InputError
from freshrec.features.jagged import JaggedBatch
from freshrec.nn.pooled import PooledEmbedding, SlotSpec
from tests.dist.ranks import (
    PIPE_EXPIRE_AFTER,
    PIPE_SLOTS,
    PIPE_STEPS,
    assert_same_tables,
    pipeline_batch,
    pipeline_tables,
    run_ranks,
    table_state,
)

SLOTS = {s: SlotSpec(table=t, pooling=p) for s, (t, p) in PIPE_SLOTS.items()}


def _global_batch(step: int, world: int) -> JaggedBatch:
    """Every rank's examples of ``step``, in rank order."""
    parts = [pipeline_batch(step, r) for r in range(world)]
    return JaggedBatch.from_dict({s: [ids for p in parts for ids in p[s]] for s in PIPE_SLOTS})


def test_prefetched_requests_train_what_one_process_trains(tmp_path: Path) -> None:
    run_ranks(2, "pipeline", tmp_path)
    parts = [dict(np.load(tmp_path / f"pipeline-rank{r}.npz")) for r in range(2)]
    # rank 0 started the request of every step it could ahead, rank 1 of every other one
    ahead = [k for k in range(PIPE_STEPS - 1) if k != PIPE_EXPIRE_AFTER]
    assert parts[0]["pipelined"].tolist() == [len(ahead)] * 2
    assert parts[1]["pipelined"].tolist() == [sum(k % 2 for k in ahead)] * 2
    single = PooledEmbedding(pipeline_tables(), SLOTS)
    for k in range(PIPE_STEPS):
        pooled = single(_global_batch(k, 2), now=k)
        (0.5 * (pooled * pooled).sum()).backward()
        if k == PIPE_EXPIRE_AFTER:
            for table in single.tables.values():
                table.expire(k)
    assert single.tables["user"].stats().rejected > 0  # admission counted across ranks
    assert single.tables["item"].stats().expired > 0
    assert_same_tables(parts, single.tables)


def test_one_rank_with_prefetch_equals_plain_and_checks_its_contract() -> None:
    sharded = ShardedPooledEmbedding(pipeline_tables(), SLOTS, SparseExchange())
    plain = PooledEmbedding(pipeline_tables(), SLOTS)
    batches = [_global_batch(k, 1) for k in range(4)]
    for k, batch in enumerate(batches):
        a, b = plain(batch, now=k), sharded(batch, now=k)
        torch.testing.assert_close(a, b)
        if k + 1 < len(batches):
            sharded.prefetch(batches[k + 1], now=k + 1)
        (a * a).sum().backward()
        (b * b).sum().backward()
    assert sharded.pipelined == 3
    for name in ("user", "item"):
        np.testing.assert_allclose(table_state(sharded.tables)[f"{name}.values"],
                                   table_state(plain.tables)[f"{name}.values"], atol=1e-6)
    batch = batches[0]
    sharded.prefetch(batch, now=9)
    with pytest.raises(InputError, match="prefetched batch was not trained on"):
        sharded.prefetch(batch, now=9)
    with pytest.raises(InputError, match="at the step's time 9"):
        sharded(batch, now=10)
    sharded.prefetch(batch, now=20)
    sharded.tables["item"].expire(20)  # rows removed after the request resolved them
    with pytest.raises(InputError, match="'item' was changed"):
        sharded(batch, now=20)


def test_sum_pooled_slots_only_equal_plain() -> None:
    slots = {"item_id": SlotSpec(table="item"), "user_id": SlotSpec(table="user")}
    sharded = ShardedPooledEmbedding(pipeline_tables(), slots, SparseExchange())
    plain = PooledEmbedding(pipeline_tables(), slots)
    batch = JaggedBatch.from_dict({s: v for s, v in pipeline_batch(0, 0).items() if s in slots})
    for _ in range(2):  # the second time users counted twice are admitted
        torch.testing.assert_close(sharded(batch, now=0), plain(batch, now=0))
