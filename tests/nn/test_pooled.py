from __future__ import annotations

import numpy as np
import pytest
import torch

from freshrec.errors import ConfigError, InputError
from freshrec.features import JaggedBatch
from freshrec.nn import PooledEmbedding, SlotSpec
from freshrec.table import EmbeddingTable, InitializerConfig, OptimizerConfig, TableConfig


def _table(name: str = "item", dim: int = 5, lr: float = 1.0) -> EmbeddingTable:
    return EmbeddingTable(TableConfig(
        name=name, dim=dim, initializer=InitializerConfig(kind="normal", std=0.5, seed=3),
        optimizer=OptimizerConfig(kind="sgd", lr=lr)))


def _random_batch(rng: np.random.Generator, b: int, vocab: int, slots: list[str]) -> JaggedBatch:
    data = {}
    for s in slots:
        lens = rng.integers(0, 4, size=b)
        data[s] = [rng.integers(0, vocab, size=n).tolist() for n in lens]
    return JaggedBatch.from_dict(data)


@pytest.mark.parametrize("pooling", ["sum", "mean"])
def test_matches_embedding_bag_forward_and_backward(pooling):
    rng = np.random.default_rng(0)
    vocab, dim, b = 30, 5, 16
    table = _table(dim=dim)
    slots = ["a", "b"]
    module = PooledEmbedding({"item": table}, {s: SlotSpec(table="item", pooling=pooling)
                                               for s in slots})
    batch = _random_batch(rng, b, vocab, slots)
    # admit every id first so both sides see the same rows
    table.lookup(np.arange(vocab, dtype=np.uint64), now=0, train=True)
    weight = torch.tensor(table.lookup(np.arange(vocab, dtype=np.uint64)), requires_grad=True)

    out = module(batch, now=1)
    upstream = torch.from_numpy(rng.standard_normal(out.shape).astype(np.float32))

    ref_parts = []
    for s in slots:
        v, off = batch.slot(s)
        bag = torch.nn.functional.embedding_bag(
            torch.from_numpy(v.astype(np.int64)), weight, torch.from_numpy(off[:-1]),
            mode=pooling)
        ref_parts.append(bag)
    ref = torch.stack(ref_parts, dim=1)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)

    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    after = torch.from_numpy(table.lookup(np.arange(vocab, dtype=np.uint64)))
    # SGD with lr=1: new = old - grad
    torch.testing.assert_close(after, weight.detach() - weight.grad, atol=1e-5, rtol=1e-5)


def test_eval_mode_does_not_admit_or_update():
    table = _table()
    module = PooledEmbedding({"item": table}, {"x": SlotSpec(table="item")}).eval()
    out = module(JaggedBatch.from_dict({"x": [[1, 2]]}))
    assert len(table) == 0
    assert not out.requires_grad
    assert torch.count_nonzero(out) == 0


def test_training_requires_now():
    module = PooledEmbedding({"item": _table()}, {"x": SlotSpec(table="item")})
    with pytest.raises(InputError, match="now"):
        module(JaggedBatch.from_dict({"x": [[1]]}))


def test_missing_table_and_slot_errors():
    with pytest.raises(ConfigError, match="slot 'x' uses table 'nope'"):
        PooledEmbedding({"item": _table()}, {"x": SlotSpec(table="nope")})
    module = PooledEmbedding({"item": _table()}, {"x": SlotSpec(table="item")})
    with pytest.raises(InputError, match="lacks slots"):
        module(JaggedBatch.from_dict({"y": [[1]]}), now=0)


def test_two_tables_and_dense_model_train_together():
    rng = np.random.default_rng(1)
    user, item = _table("user", lr=0.5), _table("item", lr=0.5)
    module = PooledEmbedding({"user": user, "item": item},
                             {"u": SlotSpec(table="user"), "i": SlotSpec(table="item")})
    head = torch.nn.Linear(10, 1)
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    # learn: label = 1 for even user ids
    losses = []
    for step in range(150):
        users = rng.integers(0, 20, size=64)
        batch = JaggedBatch.from_dict({"u": [[int(x)] for x in users],
                                       "i": [[int(x)] for x in rng.integers(0, 5, size=64)]})
        y = torch.from_numpy((users % 2 == 0).astype(np.float32))
        logits = head(module(batch, now=step).flatten(1)).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert len(user) == 20 and len(item) == 5


def test_backward_after_expiry_reresolves_rows():
    table = EmbeddingTable(TableConfig(name="item", dim=2, ttl_s=5,
                                       optimizer=OptimizerConfig(kind="sgd", lr=1.0)))
    module = PooledEmbedding({"item": table}, {"x": SlotSpec(table="item")})
    out = module(JaggedBatch.from_dict({"x": [[9]]}), now=0)
    assert table.expire(now=100) == 1
    table.lookup(np.array([5], np.uint64), now=100, train=True)  # reuses fid 9's row
    before = table.lookup([5]).copy()
    out.sum().backward()  # must not write fid 9's gradient into fid 5's row
    np.testing.assert_array_equal(table.lookup([5]), before)
    assert table.find([9]).tolist() == [-1]
