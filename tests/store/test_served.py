"""ServedRedisTable: rows read per request, the local copy's lifetime, fallbacks while Redis
is down (a real redis-server stopped and restarted)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from freshrec.store import NewUserInitConfig, RedisTable, StoreConfig
from freshrec.store.served import ServedRedisTable, render_metrics, serving_tables
from freshrec.table import EmbeddingTable, TableConfig, TableDelta
from tests.conftest import DURABLE, start_redis, stop_process

pytestmark = pytest.mark.redis


def config(url: str, prefix: str, name: str = "user", **store: Any) -> TableConfig:
    """A generous time budget (the machine may be loaded) unless the test sets one."""
    store.setdefault("serve_timeout_ms", 5000.0)
    return TableConfig(name=name, dim=4, backend="redis",
                       store=StoreConfig(url=url, prefix=prefix, **store))


def flushed_and_served(trainer: RedisTable, served: ServedRedisTable,
                       fids: np.ndarray) -> np.ndarray:
    """Create ``fids``' rows on the trainer, flush them, check serving reads them; the rows."""
    trainer.lookup(fids, now=0, train=True)
    trainer.flush()
    want = trainer.lookup(fids)
    np.testing.assert_array_equal(served.lookup(fids), want)
    return want


def test_serving_reads_what_the_trainer_flushed(store_url: str, prefix: str,
                                                closing: list[Any]) -> None:
    trainer = RedisTable(config(store_url, prefix))
    served = ServedRedisTable(config(store_url, prefix, serve_cache_ms=60_000.0))
    uncached = ServedRedisTable(config(store_url, prefix, serve_cache_ms=0.0))
    closing += [trainer, served, uncached]
    fids = np.array([1, 2, 3], np.uint64)
    trainer.lookup(fids, now=0, train=True)
    trainer.flush()
    np.testing.assert_array_equal(served.lookup(fids), trainer.lookup(fids))
    assert served.lookup(np.array([99], np.uint64)).tolist() == [[0.0] * 4]  # not in Redis
    trainer.apply_gradients(fids[:1], np.ones((1, 4), np.float32))
    trainer.flush()
    old = served.lookup(fids[:1])
    assert not np.array_equal(old, trainer.lookup(fids[:1]))  # the local copy, still fresh
    np.testing.assert_array_equal(uncached.lookup(fids[:1]), trainer.lookup(fids[:1]))
    c = served.counters
    assert c["cache_hits"] >= 1 and c["missing"] >= 1 and c["redis_reads"] >= 3


def test_local_copy_is_bounded(redis_server: str, prefix: str, closing: list[Any]) -> None:
    trainer = RedisTable(config(redis_server, prefix, name="bounded"))
    served = ServedRedisTable(config(redis_server, prefix, name="bounded",
                                     serve_cache_rows=10))
    closing += [trainer, served]
    fids = np.arange(50, dtype=np.uint64)
    trainer.lookup(fids, now=0, train=True)
    trainer.flush()
    for chunk in np.split(fids, 10):
        np.testing.assert_array_equal(served.lookup(chunk), trainer.lookup(chunk))
    assert len(served) <= 10


def test_serving_survives_redis_stopping_and_restarting(tmp_path: Path, prefix: str,
                                                        closing: list[Any]) -> None:
    proc, port = start_redis(tmp_path, None, *DURABLE)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        trainer = RedisTable(config(url, prefix, name="outage"))
        served = ServedRedisTable(config(url, prefix, name="outage", serve_cache_ms=0.0,
                                         serve_timeout_ms=2000.0, retry_backoff_s=0.0,
                                         serve_fallback="init"))
        closing += [trainer, served]
        known, new = np.array([1, 2], np.uint64), np.array([7], np.uint64)
        want = flushed_and_served(trainer, served, known)
        before = dict(served.counters)
        stop_process(proc)
        # Redis is down: no error; known rows keep their last copy, a new fid gets the
        # initializer's row (where training would start it), all counted
        np.testing.assert_array_equal(served.lookup(known), want)
        init = EmbeddingTable(TableConfig(name="outage", dim=4)).lookup(new, now=0, train=True)
        np.testing.assert_array_equal(served.lookup(new), init)
        after = served.counters
        assert after["stale_rows"] - before["stale_rows"] == 2
        assert after["fallback_rows"] - before["fallback_rows"] == 1
        assert after["redis_errors"] - before["redis_errors"] == 2
        assert 'freshrec_store_fallback_rows_total{table="outage"}' in render_metrics()
        proc, _ = start_redis(tmp_path, port, *DURABLE)
        trainer.apply_gradients(known, np.ones((2, 4), np.float32))
        trainer.flush()
        deadline = time.monotonic() + 10
        while not np.array_equal(served.lookup(known), trainer.lookup(known)):
            assert time.monotonic() < deadline, "serving never read Redis again"
            time.sleep(0.05)
    finally:
        stop_process(proc)


def test_bad_values_read_by_serving_are_counted_as_missing(store_url: str, prefix: str,
                                                           closing: list[Any]) -> None:
    """Wrong length or a NaN: logged, counted, and served as an absent row (zeros); one
    server is read through the WireClient, a cluster through redis-py's cluster client."""
    from freshrec.store.client import RowKeys, open_client
    from freshrec.store.wire import WireClient

    served = ServedRedisTable(config(store_url, prefix, name="badserve", serve_cache_ms=0.0))
    client = open_client(store_url, "test")
    closing += [served, client]
    assert isinstance(served.rows_store.client, WireClient) == store_url.startswith("redis:")
    keys, width = RowKeys(prefix, "badserve"), served.rows_store.width  # row + its state
    client.set(keys.row(1), np.ones(width - 1, np.float32).tobytes())       # too short
    client.set(keys.row(2), np.full(width, np.nan, np.float32).tobytes())  # NaN
    client.set(keys.row(3), np.full(width, 0.5, np.float32).tobytes())     # good
    bad0, missing0 = served.rows_store.bad, served.counters["missing"]
    got = served.lookup(np.array([1, 2, 3], np.uint64))
    assert got.tolist() == [[0.0] * 4, [0.0] * 4, [0.5] * 4]
    assert served.rows_store.bad - bad0 == 2 and served.counters["missing"] - missing0 == 2


def test_a_slow_redis_costs_the_budget_and_no_request(redis_server: str, prefix: str,
                                                      closing: list[Any]) -> None:
    """Redis paused (``CLIENT PAUSE``): each read gives up at ``serve_timeout_ms`` and the
    rows come from the local copy or the fallback, counted; after the pause, Redis again."""
    import redis

    trainer = RedisTable(config(redis_server, prefix, name="slow"))
    served = ServedRedisTable(config(redis_server, prefix, name="slow", serve_cache_ms=0.0,
                                     serve_timeout_ms=50.0, retry_backoff_s=0.0))
    admin = redis.Redis.from_url(redis_server)
    closing += [trainer, served, admin]
    known, new = np.array([1, 2], np.uint64), np.array([9], np.uint64)
    want = flushed_and_served(trainer, served, known)
    before = dict(served.counters)
    admin.execute_command("CLIENT", "PAUSE", 2000, "ALL")
    try:
        t0 = time.perf_counter()
        np.testing.assert_array_equal(served.lookup(known), want)  # the local copy
        assert served.lookup(new).tolist() == [[0.0] * 4]           # the fallback
        assert time.perf_counter() - t0 < 1.5  # did not wait for the pause to end
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    c = served.counters
    assert c["redis_errors"] - before["redis_errors"] == 2
    assert c["stale_rows"] - before["stale_rows"] == 2
    assert c["fallback_rows"] - before["fallback_rows"] == 1
    trainer.apply_gradients(known, np.ones((2, 4), np.float32))
    trainer.flush()
    np.testing.assert_array_equal(served.lookup(known), trainer.lookup(known))


def test_serving_tables_wraps_only_redis_tables(closing: list[Any]) -> None:
    tables = {"user": EmbeddingTable(config("redis://127.0.0.1:1/0", "p")),
              "item": EmbeddingTable(TableConfig(name="item", dim=4))}
    tables["user"].apply_delta(TableDelta.empty("user", tables["user"].config.fingerprint(),
                                                dim=4, from_version=0, to_version=7))
    served = serving_tables(tables)
    closing.append(served["user"])
    assert isinstance(served["user"], ServedRedisTable) and served["item"] is tables["item"]
    assert served["user"].applied_version == 7  # the registry's next delta applies
    assert serving_tables(served)["user"] is served["user"]


def test_init_fallback_uses_the_new_user_source(prefix: str, closing: list[Any]) -> None:
    """While Redis is out of reach, ``init`` serves the row a new user starts from."""
    served = ServedRedisTable(config("redis://127.0.0.1:1/0", prefix, name="fallback_fixed",
                                     serve_fallback="init", new_user=NewUserInitConfig(
                                         source="fixed", value=(1.0, 2.0, 3.0, 4.0))))
    closing.append(served)
    assert served.lookup(np.array([5], np.uint64)).tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert served.counters["fallback_rows"] >= 1


def _scores_by_worker(url: str, body: dict[str, Any]) -> dict[int, list[float]]:
    """Scores of ``body`` from each of the 2 workers (a new connection per try until both
    answered)."""
    import httpx

    out: dict[int, list[float]] = {}
    for _ in range(80):
        with httpx.Client(base_url=url, timeout=30) as c:  # one connection: one worker
            pid = c.get("/readyz").json()["pid"]
            r = c.post("/score", json=body)
            assert r.status_code == 200, r.text
            out[pid] = r.json()["scores"]
        if len(out) == 2:
            return out
    raise AssertionError(f"only workers {sorted(out)} answered")


def test_every_worker_of_serve_workers_reads_redis(redis_server: str, prefix: str,
                                                   tmp_path: Path) -> None:
    """``serve --workers 2`` with the user table in Redis: each worker reads the rows from
    Redis itself (a change written to Redis alone changes both workers' scores alike, and
    writing the old rows back restores them)."""
    import redis

    from freshrec.config import config_from_dict
    from freshrec.serve import ServeConfig
    from freshrec.serve.workers import WorkerPool
    from freshrec.sync import Registry
    from tests.serve._helpers import make_config, request, train_and_publish

    raw = dict(make_config().raw)
    raw["features"]["tables"]["user"] = {
        **raw["features"]["tables"]["user"], "backend": "redis",
        "store": {"url": redis_server, "prefix": prefix, "serve_cache_ms": 0,
                  "serve_timeout_ms": 5000}}
    reg = Registry(tmp_path / "reg")
    trainer, _ = train_and_publish(reg, config_from_dict(raw))
    trainer.tables["user"].flush()  # type: ignore[attr-defined]
    trainer.tables["user"].close()  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_server)
    keys = sorted(client.scan_iter(match=f"{prefix}:user:*"))
    saved = dict(zip(keys, client.mget(keys), strict=True))
    assert saved and all(len(v) == 16 * 4 for v in saved.values())  # dim 8 + Adagrad's 8
    body = request(np.random.default_rng(0))
    pool = WorkerPool(reg.root, ServeConfig(port=0, workers=2, poll_interval_s=0.05,
                                            queue_budget_s=5.0))
    pool.start()
    try:
        before = _scores_by_worker(pool.url, body)
        a, b = before.values()
        assert a == b
        client.mset({k: np.full(16, 0.5, "<f4").tobytes() for k in keys})
        changed = _scores_by_worker(pool.url, body)
        c, d = changed.values()
        assert c == d and not np.allclose(c, a, atol=1e-4)
        client.mset(saved)
        restored = _scores_by_worker(pool.url, body)
        assert all(np.allclose(s, a, atol=1e-6) for s in restored.values())
    finally:
        pool.stop()
        client.close()
