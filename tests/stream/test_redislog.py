"""Redis Streams log: pending re-delivery, acknowledgements, trimming, id packing, retries;
on one server and on a Redis Cluster."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from freshrec.errors import ConfigError
from freshrec.stream import RedisLog, RedisLogConfig
from freshrec.stream._redis import connect
from freshrec.stream.redislog import id_to_offset, offset_to_id
from tests.conftest import DURABLE, free_ports, start_redis

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis_server", "redis_cluster"])
def url(request) -> str:
    """The URL of one server, then of a 3-master cluster."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def cfg(url):
    return RedisLogConfig(url=url, name=f"t{uuid.uuid4().hex[:8]}", claim_idle_s=0.2)


def test_id_packing_round_trips_and_orders():
    ids = ["0-1", "5-0", "5-7", "1700000000000-1048575", "1700000000001-0"]
    offs = [id_to_offset(i) for i in ids]
    assert offs == sorted(offs)
    assert [offset_to_id(o) for o in offs] == ids


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("url", "http://127.0.0.1:6379", "a redis://, unix:// or redis\\+cluster:// URL"),
    ("url", "redis+cluster://127.0.0.1:7000/1",
     "database 0 on a cluster \\(redis\\+cluster://host:port/0\\)"),
    ("name", "ev{1}", "a non-empty string without braces"),
])
def test_config_names_a_bad_url_or_name(field, value, expected):
    with pytest.raises(ConfigError, match=f"RedisLogConfig: {field} must be {expected}, got"):
        RedisLogConfig(**{field: value})


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
    r = connect(cfg.url, cfg.name)
    assert r.xpending(log.keys.stream(0), "g")["pending"] == 0
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


def test_append_with_max_len_bounds_the_stream(url):
    cfg = RedisLogConfig(url=url, name=f"t{uuid.uuid4().hex[:8]}", max_len=100)
    log = RedisLog(cfg)
    for _ in range(20):
        log.append([b"y" * 10] * 100)
    n = len(log.read(0, 0, 100_000))
    assert 100 <= n < 2000  # approximate trimming keeps at least max_len
    log.delete()
    log.close()


def test_append_whose_reply_is_lost_is_retried_once(cfg, monkeypatch):
    log = RedisLog(cfg)
    real = log._append_once
    calls = []

    def reply_lost(**kw):
        calls.append(real(**kw))  # the server appends ...
        if len(calls) == 1:
            raise redis.ConnectionError("connection reset")  # ... but the reply is lost
        return calls[-1]

    monkeypatch.setattr(log, "_append_once", reply_lost)
    offsets = log.append([b"a", b"b", b"c"])
    assert log.reconnects == 1 and len(calls) == 2
    assert [(r.offset, r.value) for r in log.read(0, 0)] == list(
        zip(offsets, [b"a", b"b", b"c"], strict=True))  # added once, offsets of that once
    assert log.append([b"d"]) != offsets[:1]  # a new call is a new append
    assert len(log.read(0, 0)) == 4
    log.delete()
    log.close()


@pytest.mark.parametrize("scheme", ["redis", "redis+cluster"])
def test_an_unreachable_server_raises_after_retry_s(scheme, caplog):
    # a cluster client connects when built (it fetches the slot map), a plain one on use
    url = f"{scheme}://127.0.0.1:{free_ports(1)[0]}/0"  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises((redis.ConnectionError, redis.exceptions.RedisClusterException)):
        log = RedisLog(RedisLogConfig(url=url, retry_s=0.4))
        try:
            log.read(0, 0)
        finally:
            log.close()
    assert 0.3 <= time.monotonic() - t0 < 2.0
    assert sum("lost the server" in r.message for r in caplog.records) >= 2


def test_reads_and_polls_continue_across_a_server_restart(tmp_path):
    proc, port = start_redis(tmp_path, None, *DURABLE)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        RedisLog(RedisLogConfig(url=url, name="s")).append([b"%d" % i for i in range(300)])
        got: dict[str, list[bytes]] = {"read": [], "poll": []}
        reader = RedisLog(RedisLogConfig(url=url, name="s"))

        def consume() -> None:
            offset = 0
            while len(got["read"]) < 300 or len(got["poll"]) < 300:
                recs = reader.read(0, offset, max_records=10, timeout_s=0.1)
                got["read"] += [r.value for r in recs]
                offset = recs[-1].offset + 1 if recs else offset
                polled = reader.poll("g", 0, max_records=10, timeout_s=0.1)
                got["poll"] += [r.value for r in polled]
                if polled:
                    reader.commit("g", 0, polled[-1].offset + 1)
                time.sleep(0.01)

        worker = threading.Thread(target=consume, daemon=True)
        worker.start()
        while len(got["read"]) < 50:
            time.sleep(0.01)
        proc.kill()  # kill -9 mid-way, down for a second, back on the same port
        proc.wait()
        time.sleep(1.0)
        proc, _ = start_redis(tmp_path, port, *DURABLE)
        worker.join(timeout=60)
        assert not worker.is_alive()
        assert reader.reconnects > 0
        assert got["read"] == got["poll"] == [b"%d" % i for i in range(300)]
        reader.close()
    finally:
        proc.kill()
        proc.wait()


def test_an_entry_written_without_the_value_field_is_dead_lettered_not_fatal(cfg, tmp_path):
    """Another client XADDs an entry with its own field names into the stream: readers get a
    record that names it, and a joiner dead-letters it and joins what follows (before, every
    read and poll raised KeyError at that entry)."""
    from freshrec.stream import FileLog, FileLogConfig, Joiner, JoinerConfig
    from freshrec.stream import events as ev

    log = RedisLog(cfg)
    imp = {"type": "impression", "event_id": "e1", "request_id": "r1", "user_id": 1,
           "timestamp": 100.0, "user": {}, "candidates": [{"item_id": 7, "position": 0}]}
    log.append([ev.encode(imp)])
    r = connect(cfg.url, cfg.name)
    foreign = r.xadd(log.keys.stream(0), {b"data": b"{}"})
    log.append([ev.encode({**imp, "event_id": "e2", "request_id": "r2"})])
    got = log.read(0, 0, 10)
    assert [g.value for g in got][1] == (
        f"redis stream entry {foreign.decode()} has no field 'v' (its fields: data)".encode())
    assert len(log.poll("g", 0, max_records=10)) == 3
    dl = FileLog(tmp_path / "dl", FileLogConfig(fsync="never"))
    out = FileLog(tmp_path / "out", FileLogConfig(fsync="never"))
    j = Joiner(log, out, tmp_path / "state", JoinerConfig(window_s=1, allowed_lateness_s=0),
               side_logs={"dead_letter": dl})
    m = j.run(idle_timeout_s=0.3, flush_at_end=True)
    assert m["events_in"] == 3 and m["dead_letters"] == 1 and m["examples_out"] == 2
    assert b"has no field 'v'" in dl.read(0, 0, 10)[0].value
    j.close()
    log.delete()
    log.close()
    r.close()


def test_a_damaged_consumer_group_position_is_an_error_naming_it(cfg):
    """A position another client overwrote: an error naming the hash and field (it raised
    ValueError from int())."""
    from freshrec.errors import InputError

    log = RedisLog(cfg)
    log.append([b"a", b"b"])
    log.commit("g", 0, 1)
    assert log.committed("g", 0) == 1
    key = log.keys.commits(0)
    r = connect(cfg.url, cfg.name)
    r.hset(key, "g", b"x1")
    with pytest.raises(InputError, match=f"consumer group 'g' in partition 0 \\(hash {key!r}, "
                                         f"field 'g'\\) is not an offset >= 0: b'x1'"):
        log.committed("g", 0)
    r.hdel(key, "g")
    assert log.committed("g", 0) == 0
    log.close()
    r.close()
