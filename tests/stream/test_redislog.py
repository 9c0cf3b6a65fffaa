"""Redis Streams log: pending re-delivery, acknowledgements, trimming, id packing."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from freshrec.stream import RedisLog, RedisLogConfig
from freshrec.stream.redislog import id_to_offset, offset_to_id

pytestmark = pytest.mark.redis


@pytest.fixture
def cfg(redis_server):
    return RedisLogConfig(url=redis_server, name=f"t{uuid.uuid4().hex[:8]}", claim_idle_s=0.2)


def test_id_packing_round_trips_and_orders():
    ids = ["0-1", "5-0", "5-7", "1700000000000-1048575", "1700000000001-0"]
    offs = [id_to_offset(i) for i in ids]
    assert offs == sorted(offs)
    assert [offset_to_id(o) for o in offs] == ids


def test_pending_entries_are_redelivered_to_another_consumer(cfg):
    log = RedisLog(cfg)
    log.append([f"m{i}".encode() for i in range(10)])
    a = log.poll("g", 0, max_records=4, consumer="a")
    assert [r.value for r in a] == [b"m0", b"m1", b"m2", b"m3"]
    # consumer "a" dies without committing; after claim_idle_s "b" gets its entries first
    time.sleep(0.3)
    b = log.poll("g", 0, max_records=10, consumer="b")
    assert [r.value for r in b] == [f"m{i}".encode() for i in range(10)]
    log.commit("g", 0, b[-1].offset + 1)
    r = redis.Redis.from_url(cfg.url)
    assert r.xpending(f"{cfg.name}:p0", "g")["pending"] == 0
    time.sleep(0.3)
    assert log.poll("g", 0, consumer="c") == []
    assert log.lag("g") == 0
    log.delete()
    log.close()
    r.close()


def test_trim_by_length_and_by_age(cfg):
    log = RedisLog(cfg)
    log.append([b"x"] * 100)
    assert log.trim(0, max_len=30) == 70
    assert len(log.read(0, 0, 1000)) == 30
    assert log.trim(0, older_than_s=3600) == 0  # nothing is an hour old
    assert log.trim(0, older_than_s=1, now_s=time.time() + 60) == 30
    assert log.read(0, 0) == []
    log.delete()
    log.close()


def test_append_with_max_len_bounds_the_stream(redis_server):
    cfg = RedisLogConfig(url=redis_server, name=f"t{uuid.uuid4().hex[:8]}", max_len=100)
    log = RedisLog(cfg)
    for _ in range(20):
        log.append([b"y" * 10] * 100)
    n = len(log.read(0, 0, 100_000))
    assert 100 <= n < 2000  # approximate trimming keeps at least max_len
    log.delete()
    log.close()
