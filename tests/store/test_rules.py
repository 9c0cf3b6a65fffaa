"""New-user init and conditional update rules: each changes what it claims and nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrec.errors import ConfigError
from freshrec.features.config import feature_config_from_dict
from freshrec.features.jagged import JaggedBatch
from freshrec.store import RedisTable, store_config_from_dict
from freshrec.store.rules import prepare_new_rows
from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig, TableDelta

pytestmark = pytest.mark.redis

ADAGRAD = OptimizerConfig(kind="adagrad", lr=0.1)


def table(url: str, prefix: str, closing: list[Any], **store: Any) -> RedisTable:
    t = RedisTable(TableConfig(name="user", dim=4, optimizer=ADAGRAD, backend="redis",
                               store=store_config_from_dict({"url": url, "prefix": prefix,
                                                             **store})))
    closing.append(t)
    return t


def plain() -> EmbeddingTable:
    return EmbeddingTable(TableConfig(name="user", dim=4, optimizer=ADAGRAD))


def copy_into(src: EmbeddingTable, dst: EmbeddingTable, fids: np.ndarray) -> None:
    r = src.read_rows(fids)
    dst.apply_delta(TableDelta(table="user", fingerprint=dst.config.fingerprint(),
                               from_version=0, to_version=0, fids=r.fids, values=r.values,
                               last_seen=r.last_seen, states=r.states,
                               expired=np.empty(0, np.uint64)), check_version=False)


def grads(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 4)).astype(np.float32)


def test_min_events(redis_server: str, prefix: str, closing: list[Any]) -> None:
    t = table(redis_server, prefix, closing, update_rules={"min_events": 3})
    t.lookup(np.array([1, 2], np.uint64), now=0, train=True)
    start = t.read_rows([1, 2])
    t.apply_gradients(np.array([1, 1, 2], np.uint64), grads(0, 3))
    after = t.read_rows([1, 2])  # 1 in two examples, 2 in one: neither row nor state moves
    np.testing.assert_array_equal(after.values, start.values)
    assert start.states is not None and after.states is not None
    np.testing.assert_array_equal(after.states, start.states)
    ref = plain()
    copy_into(t, ref, np.array([1, 2], np.uint64))
    g = grads(1, 2)
    t.apply_gradients(np.array([1, 2], np.uint64), g)  # 1: 3 examples, 2: 2
    ref.apply_gradients(np.array([1, 2], np.uint64), g)
    np.testing.assert_array_equal(t.lookup([1]), ref.lookup([1]))  # a plain step
    np.testing.assert_array_equal(t.lookup([2]), start.values[1:])  # still held


def test_min_events_through_the_model_path(redis_server: str, prefix: str,
                                           closing: list[Any]) -> None:
    """resolve + apply_bag_gradients (what the model uses) counts examples the same way."""
    t = table(redis_server, prefix, closing, update_rules={"min_events": 2})
    fids = np.array([5, 6, 5], np.uint64)  # three examples' bags of one fid each
    offsets, scale = np.arange(4, dtype=np.int64), np.ones(3, np.float32)
    rows = t.resolve(fids, now=0, train=True)
    start = t.lookup([5, 6])
    t.apply_bag_gradients(rows, offsets, scale, grads(2, 3))
    got = t.lookup([5, 6])
    assert not np.array_equal(got[0], start[0])          # 5: two examples, updated
    np.testing.assert_array_equal(got[1], start[1])      # 6: one, held


def test_dims_change_only_those_columns(store_url: str, prefix: str, closing: list[Any]
                                        ) -> None:
    t = table(store_url, prefix, closing, update_rules={"dims": [0, 2]}, cache_rows=3)
    ref = plain()
    fids = np.array([3, 4, 5, 6], np.uint64)
    start = ref.lookup(fids, now=0, train=True)
    t.lookup(fids, now=0, train=True)
    for step in range(5):
        for x in (t, ref):
            x.lookup(fids, now=step, train=True)
            x.apply_gradients(fids, grads(step, 4))
        t.flush()
    got, want = t.lookup(fids), ref.lookup(fids)
    np.testing.assert_array_equal(got[:, [1, 3]], start[:, [1, 3]])
    np.testing.assert_allclose(got[:, [0, 2]], want[:, [0, 2]], atol=1e-6)  # per-dim Adagrad


def test_max_update_norm_scales_only_large_changes(redis_server: str, prefix: str,
                                                   closing: list[Any]) -> None:
    t = table(redis_server, prefix, closing, update_rules={"max_update_norm": 0.15})
    ref = plain()
    fids = np.array([1, 2], np.uint64)
    before = t.lookup(fids, now=0, train=True)
    copy_into(t, ref, fids)
    g = np.array([[5.0, 5.0, 5.0, 5.0], [0.0, 0.0, 0.0, 1.0]], np.float32)
    t.apply_gradients(fids, g)
    ref.apply_gradients(fids, g)
    mine, full = t.lookup(fids) - before, ref.lookup(fids) - before
    assert np.linalg.norm(full[0]) > 0.15
    assert np.linalg.norm(mine[0]) == pytest.approx(0.15, rel=1e-5)
    np.testing.assert_allclose(mine[0] / np.linalg.norm(mine[0]),
                               full[0] / np.linalg.norm(full[0]), atol=1e-6)
    np.testing.assert_array_equal(mine[1], full[1])  # 0.1 < 0.15: untouched by the rule


def test_fixed_init_only_for_rows_new_to_redis(redis_server: str, prefix: str,
                                               closing: list[Any]) -> None:
    old = table(redis_server, prefix, closing)
    known = old.lookup(np.array([1], np.uint64), now=0, train=True)
    old.flush()
    t = table(redis_server, prefix, closing,
              new_user={"source": "fixed", "value": [1.0, 2.0, 3.0, 4.0]})
    rows = t.lookup(np.array([1, 2], np.uint64), now=0, train=True)
    np.testing.assert_array_equal(rows[0], known[0])              # from Redis, as it was
    assert rows[1].tolist() == [1.0, 2.0, 3.0, 4.0]               # a new user
    assert t.lookup(np.array([3], np.uint64)).tolist() == [[0.0] * 4]  # reads create nothing


def test_table_init_from_another_models_snapshot(redis_server: str, prefix: str,
                                                 closing: list[Any], tmp_path: Path) -> None:
    other = plain()
    other.lookup(np.array([10], np.uint64), now=0, train=True)
    other.apply_gradients(np.array([10], np.uint64), np.ones((1, 4), np.float32))
    other.save(tmp_path / "other")
    t = table(redis_server, prefix, closing,
              new_user={"source": "table", "table_path": str(tmp_path / "other")})
    rows = t.lookup(np.array([10, 11], np.uint64), now=0, train=True)
    np.testing.assert_array_equal(rows[0], other.lookup([10])[0])
    np.testing.assert_array_equal(rows[1], plain().lookup(np.array([11], np.uint64), now=0,
                                                          train=True)[0])


def test_table_init_with_state_starts_the_optimizer_state_too(
        redis_server: str, prefix: str, closing: list[Any], tmp_path: Path) -> None:
    other = plain()
    ten = np.array([10], np.uint64)
    other.lookup(ten, now=0, train=True)
    other.apply_gradients(ten, grads(0, 1))
    other.save(tmp_path / "other")
    src = {"source": "table", "table_path": str(tmp_path / "other")}
    t = table(redis_server, prefix, closing, new_user={**src, "with_state": True})
    bare = table(redis_server, prefix + "b", closing, new_user=src)
    fresh = plain()
    fresh.lookup(np.array([11], np.uint64), now=0, train=True)
    for x in (t, bare):
        x.lookup(np.array([10, 11], np.uint64), now=0, train=True)
    got, want, no_state = t.read_rows([10, 11]), other.read_rows([10]), bare.read_rows([10])
    assert got.states is not None and want.states is not None and no_state.states is not None
    np.testing.assert_array_equal(got.values[0], want.values[0])
    np.testing.assert_array_equal(got.states[0], want.states[0])          # the snapshot's
    np.testing.assert_array_equal(got.states[1], fresh.read_rows([11]).states[0])  # lacks 11
    np.testing.assert_array_equal(no_state.values[0], want.values[0])     # row only
    assert want.states[0].any() and not no_state.states[0].any()  # fresh: zeros
    g = grads(1, 1)
    for x in (t, other):  # the next step is the one the other model would take
        x.apply_gradients(ten, g)
    np.testing.assert_allclose(t.lookup(ten), other.lookup(ten), rtol=1e-6)
    with pytest.raises(ConfigError, match="with_state"):
        store_config_from_dict({"new_user": {"source": "fixed", "value": [0.0],
                                             "with_state": True}})
    sgd = TableConfig(name="user", dim=4, optimizer=OptimizerConfig(kind="sgd"),
                      backend="redis", store=store_config_from_dict(
                          {"url": redis_server, "prefix": prefix + "c",
                           "new_user": {**src, "with_state": True}}))
    with pytest.raises(ConfigError, match="same optimizer"):
        RedisTable(sgd)


def test_history_mean_init(redis_server: str, prefix: str, closing: list[Any]) -> None:
    features = feature_config_from_dict({
        "tables": {"user": {"dim": 4}, "item": {"dim": 4}},
        "slots": {"user_id": {"table": "user"}, "item_id": {"table": "item"},
                  "clicks": {"table": "item", "kind": "multi", "max_len": 5}}})
    items = EmbeddingTable(TableConfig(name="item", dim=4))
    item_rows = items.lookup(np.array([100, 101, 102], np.uint64), now=0, train=True)
    old = table(redis_server, prefix, closing)
    known = old.lookup(np.array([1], np.uint64), now=0, train=True)
    old.flush()
    t = table(redis_server, prefix, closing,
              new_user={"source": "history_mean", "history_slot": "clicks"})
    batch = JaggedBatch.from_dict({"user_id": [[1], [2], [3], [2]],
                                   "item_id": [[100], [101], [102], [100]],
                                   "clicks": [[100, 101], [100], [], [102]]})
    prepare_new_rows({"user": t, "item": items}, features, batch)
    rows = t.lookup(np.array([1, 2, 3], np.uint64), now=0, train=True)
    np.testing.assert_array_equal(rows[0], known[0])                  # not new: untouched
    np.testing.assert_allclose(rows[1], item_rows[[0, 2]].mean(axis=0), atol=1e-7)
    np.testing.assert_array_equal(rows[2], plain().lookup(np.array([3], np.uint64), now=0,
                                                          train=True)[0])  # no history
