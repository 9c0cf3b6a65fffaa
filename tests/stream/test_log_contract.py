"""One contract suite run over every Log backend (file, Redis on one server and on a 3-master
Redis Cluster, Kafka where a broker is set)."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from freshrec.stream import FileLog, FileLogConfig, Log, RedisLog, RedisLogConfig

LogFactory = Callable[[int], Log]

#: Redis re-delivers entries pending (delivered, not committed) for this long to the next
#: consumer that polls; long enough that no test polls that slowly by accident.
REDIS_CLAIM_IDLE_S = 1.0


def _file_factory(tmp_path) -> LogFactory:
    path = tmp_path / "log"
    return lambda partitions: FileLog(
        path, FileLogConfig(partitions=partitions, segment_bytes=4096, fsync="never"))


@pytest.fixture(params=[
    "file",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-cluster", marks=pytest.mark.redis),
    pytest.param("kafka", marks=pytest.mark.kafka),
])
def make_log(request, tmp_path) -> Iterator[LogFactory]:
    """Factory of log handles on one fresh log: every call opens a new handle on it."""
    opened: list[Log] = []
    if request.param == "file":
        base = _file_factory(tmp_path)
    elif request.param.startswith("redis"):
        url = request.getfixturevalue(
            "redis_server" if request.param == "redis" else "redis_cluster")
        name = f"t{uuid.uuid4().hex[:8]}"
        base = lambda p: RedisLog(RedisLogConfig(  # noqa: E731
            url=url, name=name, partitions=p, claim_idle_s=REDIS_CLAIM_IDLE_S))
    else:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if not bootstrap:
            pytest.skip("kafka: set KAFKA_BOOTSTRAP=host:port to run against a broker")
        from freshrec.stream.config import KafkaLogConfig
        from freshrec.stream.kafkalog import KafkaLog

        topic = f"t{uuid.uuid4().hex[:8]}"
        base = lambda p: KafkaLog(  # noqa: E731
            KafkaLogConfig(bootstrap=bootstrap, topic=topic, partitions=p))

    def factory(partitions: int = 1) -> Log:
        log = base(partitions)
        opened.append(log)
        return log

    factory.kind = request.param  # type: ignore[attr-defined]
    yield factory
    for log in opened:
        log.close()


def _payloads(n: int, tag: str = "r") -> list[bytes]:
    return [f"{tag}{i:05d}".encode() * (1 + i % 7) for i in range(n)]


def test_append_returns_increasing_offsets_and_read_round_trips(make_log):
    log = make_log(1)
    recs = _payloads(120)
    offsets = log.append(recs[:50]) + log.append(recs[50:])
    assert offsets == sorted(offsets) and len(set(offsets)) == 120
    got = log.read(0, offsets[0], max_records=1000)
    assert [r.value for r in got] == recs
    assert [r.offset for r in got] == offsets
    assert log.end_offset(0) > offsets[-1]


def test_read_from_middle_respects_max_records(make_log):
    log = make_log(1)
    recs = _payloads(40)
    offsets = log.append(recs)
    got = log.read(0, offsets[17], max_records=5)
    assert [r.value for r in got] == recs[17:22]
    assert log.read(0, offsets[-1] + 1) == []
    assert log.read(0, offsets[-1] + 1, timeout_s=0.05) == []


def test_binary_empty_and_large_records(make_log):
    log = make_log(1)
    recs = [b"", bytes(range(256)) * 4, os.urandom(1 << 20), b"\x00"]
    offsets = log.append(recs)
    assert [r.value for r in log.read(0, offsets[0], 10)] == recs


def test_partitions_are_independent(make_log):
    log = make_log(3)
    assert log.partitions == 3
    for p in range(3):
        log.append(_payloads(5 + p, tag=f"p{p}-"), partition=p)
    for p in range(3):
        vals = [r.value for r in log.read(p, 0, 100)]
        assert vals == _payloads(5 + p, tag=f"p{p}-")
        assert all(r.partition == p for r in log.read(p, 0, 100))


def test_commit_committed_and_lag(make_log):
    log = make_log(2)
    o0 = log.append(_payloads(10), partition=0)
    log.append(_payloads(4), partition=1)
    assert log.committed("g", 0) == 0
    assert log.lag("g") == 14
    log.commit("g", 0, o0[6])
    assert log.committed("g", 0) == o0[6]
    assert log.lag("g", 0) == 4
    assert log.lag("g") == 8
    assert log.lag("other") == 14
    reopened = make_log(2)
    assert reopened.committed("g", 0) == o0[6]


def test_poll_delivers_once_per_group_and_resumes_after_commit(make_log):
    log = make_log(1)
    recs = _payloads(30)
    log.append(recs)
    first = log.poll("a", 0, max_records=10)
    second = log.poll("a", 0, max_records=100)
    assert [r.value for r in first + second] == recs
    assert log.poll("a", 0) == []
    assert [r.value for r in log.poll("b", 0, max_records=100)] == recs
    log.commit("a", 0, first[-1].offset + 1)
    # a new consumer of group "a" (new handle) starts at the committed position
    again = make_log(1)
    if make_log.kind.startswith("redis"):
        # the uncommitted entries stay pending on the first handle: they come to the next
        # consumer that polls once they have been idle for claim_idle_s (XAUTOCLAIM)
        time.sleep(REDIS_CLAIM_IDLE_S)
    assert [r.value for r in again.poll("a", 0, max_records=100)] == recs[10:]


def test_truncate_removes_tail_and_appends_continue(make_log):
    if make_log.kind == "kafka":
        pytest.skip("kafka: topics cannot be truncated at the tail")
    log = make_log(1)
    recs = _payloads(50)
    offsets = log.append(recs)
    log.truncate(0, offsets[20])
    assert [r.value for r in log.read(0, 0, 100)] == recs[:20]
    new = log.append([b"after"])
    assert new[0] > offsets[19]
    assert [r.value for r in log.read(0, 0, 100)] == recs[:20] + [b"after"]


def test_records_survive_reopen(make_log):
    log = make_log(1)
    recs = _payloads(25)
    log.append(recs)
    log.close()
    assert [r.value for r in make_log(1).read(0, 0, 100)] == recs


def test_reader_tails_a_concurrent_writer(make_log):
    writer = make_log(1)
    reader = make_log(1)
    total = 600
    recs = _payloads(total)

    def write() -> None:
        for i in range(0, total, 20):
            writer.append(recs[i:i + 20])

    t = threading.Thread(target=write)
    t.start()
    got: list[bytes] = []
    nxt = 0
    for _ in range(10_000):
        batch = reader.read(0, nxt, max_records=64, timeout_s=0.05)
        got += [r.value for r in batch]
        if batch:
            nxt = batch[-1].offset + 1
        if len(got) >= total:
            break
    t.join()
    assert got == recs
