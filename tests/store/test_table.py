"""RedisTable: same rows as the in-process table, bad values, TTL expiry (real Redis)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import redis

from freshrec.store import RedisTable, StoreConfig, open_table
from freshrec.store.client import RowKeys, open_client
from freshrec.table import EmbeddingTable, OptimizerConfig, TableConfig

pytestmark = pytest.mark.redis

OPTIMIZERS = [
    OptimizerConfig(kind="adagrad", lr=0.1),
    OptimizerConfig(kind="rowwise_adagrad", lr=0.1),
    OptimizerConfig(kind="adam", lr=0.01),
    OptimizerConfig(kind="sgd", lr=0.1, weight_decay=0.01),
    OptimizerConfig(kind="ftrl", lr=0.1, l1=0.01, l2=0.01),
]


def configs(url: str, prefix: str, opt: OptimizerConfig, **store: object
            ) -> tuple[TableConfig, TableConfig]:
    base = {"name": "user", "dim": 8, "optimizer": opt}
    return (TableConfig(**base),  # type: ignore[arg-type]
            TableConfig(**base, backend="redis",  # type: ignore[arg-type]
                        store=StoreConfig(url=url, prefix=prefix, **store)))  # type: ignore[arg-type]


def gradient_stream(seed: int, steps: int, dim: int):
    rng = np.random.default_rng(seed)
    for step in range(steps):
        fids = (rng.zipf(1.3, size=64) % 500).astype(np.uint64)
        yield step, fids, rng.normal(size=(64, dim)).astype(np.float32)


@pytest.mark.parametrize("opt", OPTIMIZERS, ids=lambda o: o.kind.value)
def test_redis_table_equals_in_process_table(store_url: str, prefix: str,
                                             opt: OptimizerConfig, closing: list[Any]) -> None:
    mem_cfg, red_cfg = configs(store_url, prefix, opt, cache_rows=50)
    mem, red = EmbeddingTable(mem_cfg), open_table(red_cfg)
    closing.append(red)
    assert isinstance(red, RedisTable)
    for step, fids, grads in gradient_stream(0, 60, 8):
        a = mem.lookup(fids, now=step, train=True)
        b = red.lookup(fids, now=step, train=True)
        np.testing.assert_allclose(b, a, atol=1e-6)
        mem.apply_gradients(fids, grads, now=step)
        red.apply_gradients(fids, grads, now=step)
        if step % 7 == 6:
            red.flush()  # a small cache: rows leave it and are read back from Redis
    red.flush()
    assert red.store_counters["evicted"] > 0 and red.store_counters["faulted"] > 0
    assert len(red) <= 50
    # a new reader sees in Redis exactly the in-process rows, optimizer state included
    fresh = RedisTable(red_cfg)
    closing.append(fresh)
    everything = mem.read_rows()
    values, found = fresh.rows_store.get(everything.fids)
    assert found.all()
    np.testing.assert_allclose(values[:, :8], everything.values, atol=1e-6)
    assert everything.states is not None
    np.testing.assert_allclose(values[:, 8:], everything.states, atol=1e-6)
    np.testing.assert_allclose(fresh.lookup(everything.fids), everything.values, atol=1e-6)


def test_bag_gradients_through_resolve_match(redis_server: str, prefix: str,
                                             closing: list[Any]) -> None:
    """The path the model uses (resolve, pool, apply_bag_gradients) gives the same rows."""
    mem_cfg, red_cfg = configs(redis_server, prefix, OPTIMIZERS[0], cache_rows=30)
    mem, red = EmbeddingTable(mem_cfg), RedisTable(red_cfg)
    closing.append(red)
    for step, fids, _ in gradient_stream(1, 30, 8):
        offsets = np.arange(0, 65, 4, dtype=np.int64)
        scale = np.full(16, 0.25, np.float32)
        g = np.random.default_rng(step).normal(size=(16, 8)).astype(np.float32)
        for t in (mem, red):
            rows = t.resolve(fids, now=step, train=True)
            t.pool(rows, offsets, scale)
            t.apply_bag_gradients(rows, offsets, scale, g)
        if step % 5 == 4:
            red.flush()
    red.flush()
    rows = mem.read_rows()
    fresh = RedisTable(red_cfg)
    closing.append(fresh)
    np.testing.assert_allclose(fresh.lookup(rows.fids), rows.values, atol=1e-6)


def test_bad_values_are_counted_and_read_as_missing(store_url: str, prefix: str,
                                                    closing: list[Any]) -> None:
    _, cfg = configs(store_url, prefix, OPTIMIZERS[1])
    table = RedisTable(cfg)
    keys = RowKeys(prefix, "user")
    client = open_client(store_url, "test")
    closing += [table, client]
    width = 8 + 1  # row + row-wise Adagrad's accumulator
    client.set(keys.row(1), np.ones(width - 1, np.float32).tobytes())       # too short
    client.set(keys.row(2), np.full(width, np.nan, np.float32).tobytes())  # NaN
    client.set(keys.row(3), np.full(width, 0.5, np.float32).tobytes())     # good
    fresh = EmbeddingTable(TableConfig(name="user", dim=8, optimizer=OPTIMIZERS[1]))
    got = table.lookup(np.array([1, 2, 3], np.uint64), now=0, train=True)
    # bad rows start as a new row would; the good one is read
    np.testing.assert_array_equal(got[:2], fresh.lookup(np.array([1, 2], np.uint64), now=0,
                                                        train=True))
    np.testing.assert_array_equal(got[2], np.full(8, 0.5, np.float32))
    assert table.rows_store.bad == 2 and table.store_stats()["found"] == 1


def test_ttl_removes_inactive_rows_and_a_write_refreshes_it(store_url: str, prefix: str,
                                                            closing: list[Any]) -> None:
    # margins of 1.4 s: row 10 must outlive the checks below on a loaded machine
    _, cfg = configs(store_url, prefix, OPTIMIZERS[0], ttl_s=3.0)
    table = RedisTable(cfg)
    closing.append(table)
    table.lookup(np.array([10, 11, 12], np.uint64), now=0, train=True)
    table.flush()
    time.sleep(1.6)
    table.apply_gradients(np.array([10], np.uint64), np.ones((1, 8), np.float32))  # active
    assert table.flush() == 1
    time.sleep(1.6)  # 11 and 12 are over 3.2 s old, 10 was written 1.6 s ago
    _, found = table.rows_store.get(np.array([10, 11, 12], np.uint64))
    assert found.tolist() == [True, False, False]
    assert table.expire(now=100) == 2  # the count of rows Redis expired
    assert table.expire(now=100) == 0  # each counted once
    assert table.store_stats()["expired"] == table.stats().expired == 2


def test_rows_reach_redis_only_by_flush(redis_server: str, prefix: str,
                                        closing: list[Any]) -> None:
    _, cfg = configs(redis_server, prefix, OPTIMIZERS[0])
    table = RedisTable(cfg)
    closing.append(table)
    table.lookup(np.array([5], np.uint64), now=0, train=True)
    client = redis.Redis.from_url(redis_server)
    closing.append(client)
    assert client.get(RowKeys(prefix, "user").row(5)) is None
    table.flush()
    assert len(client.get(RowKeys(prefix, "user").row(5)) or b"") == 4 * 16  # row + adagrad


def test_a_read_from_redis_never_overwrites_a_row_trained_meanwhile(
        redis_server: str, prefix: str, closing: list[Any]) -> None:
    """A prefetch thread's read of a row that the training thread brought in and trained
    while the read was in flight must not put the old row back."""
    _, cfg = configs(redis_server, prefix, OPTIMIZERS[0])
    writer, t = RedisTable(cfg), RedisTable(cfg)
    closing += [writer, t]
    x = np.array([9], np.uint64)
    writer.lookup(x, now=0, train=True)
    writer.flush()
    read = t.rows_store.get

    def read_while_training(fids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = read(fids)
        t.rows_store.get = read  # type: ignore[method-assign]
        t.lookup(x, now=0, train=True)                       # the other thread ...
        t.apply_gradients(x, np.ones((1, 8), np.float32))   # ... trains the row
        return out

    t.rows_store.get = read_while_training  # type: ignore[method-assign]
    t.lookup(x, now=0, train=True)
    trained = t.lookup(x)
    assert not np.array_equal(trained, writer.lookup(x))  # the step stayed
